"""AWS error codes of the SageMaker control plane and runtime, as exception classes.

The control plane (JSON 1.1) answers `{"__type": code, "message": text}` with HTTP 400;
the runtime (rest-json) names the code in the `x-amzn-ErrorType` header and may add members
(`OriginalStatusCode`, `OriginalMessage`, `LogStreamArn` for `ModelError`).
"""

from __future__ import annotations

from typing import Any


class SageMakerError(Exception):
    """An error answered to the caller in AWS's shape."""

    code = "InternalFailure"
    status = 400

    def __init__(self, message: str, **members: Any) -> None:
        super().__init__(message)
        self.message = message
        self.members = members

    def body(self) -> dict[str, Any]:
        """The JSON body of the error answer."""
        return {"__type": self.code, "message": self.message, **self.members}


# Control plane (service `sagemaker`).
class ValidationException(SageMakerError):
    """A request that fails validation or names a missing resource (most Describe/Delete ops)."""

    code = "ValidationException"


class ResourceNotFound(SageMakerError):
    """A resource that does not exist, for the operations that model this error."""

    code = "ResourceNotFound"


class ResourceInUse(SageMakerError):
    """A resource name already taken (training jobs) or a resource busy."""

    code = "ResourceInUse"


class ResourceLimitExceeded(SageMakerError):
    """Too many resources of a kind (local limits: running endpoints, training jobs)."""

    code = "ResourceLimitExceeded"


class UnknownOperationException(SageMakerError):
    """An `X-Amz-Target` this service does not implement."""

    code = "UnknownOperationException"


class SerializationException(SageMakerError):
    """A request body that is not a JSON object."""

    code = "SerializationException"


class InternalFailure(SageMakerError):
    """An unexpected failure inside sagemaker-local."""

    code = "InternalFailure"
    status = 500


# Authorization of role credentials (asked of the emulator: authorization.py).
class AccessDeniedException(SageMakerError):
    """The caller's policies do not allow the action (AWS: 400 on SageMaker's APIs)."""

    code = "AccessDeniedException"
    status = 400


class UnrecognizedClientException(SageMakerError):
    """A session token that does not belong to the access key."""

    code = "UnrecognizedClientException"
    status = 400


class ExpiredTokenException(SageMakerError):
    """Credentials of an expired STS session."""

    code = "ExpiredTokenException"
    status = 400


# Runtime (service `sagemaker-runtime`).
class RuntimeValidationError(SageMakerError):
    """The runtime's 400 `ValidationError` (also how AWS answers an unknown endpoint)."""

    code = "ValidationError"
    status = 400


class ModelError(SageMakerError):
    """The model container answered an error or did not answer: 424 with its original status."""

    code = "ModelError"
    status = 424


class ServiceUnavailable(SageMakerError):
    """The runtime cannot serve now, retryable: shutting down, model server busy or replaced."""

    code = "ServiceUnavailable"
    status = 503


class PayloadTooLarge(SageMakerError):
    """A body above the InvokeEndpoint limit: AWS's front door answers a bare 413."""

    code = ""
    status = 413

    def body(self) -> dict[str, Any]:
        """No `__type`: botocore then reports the HTTP status ("413") as the error code."""
        return {"message": self.message}
