"""AWS error codes of the SageMaker control plane and runtime, as exception classes.

The control plane (JSON 1.1) answers `{"__type": code, "message": text}` with HTTP 400;
the runtime (rest-json) names the code in the `x-amzn-ErrorType` header and may add members
(`OriginalStatusCode`, `OriginalMessage`, `LogStreamArn` for `ModelError`).
Each error is one class statement: its AWS code and HTTP status as class keywords.
"""

from __future__ import annotations

from typing import Any


class SageMakerError(Exception):
    """An error answered to the caller in AWS's shape."""

    code = "InternalFailure"
    status = 400

    def __init_subclass__(cls, code: str | None = None, status: int = 400, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        cls.status = status

    def __init__(self, message: str, **members: Any) -> None:
        super().__init__(message)
        self.message = message
        self.members = members

    def body(self) -> dict[str, Any]:
        """The JSON body of the error answer."""
        return {"__type": self.code, "message": self.message, **self.members}


# Control plane (service `sagemaker`).
class ValidationException(SageMakerError, code="ValidationException"):
    """A request that fails validation or names a missing resource (most Describe/Delete ops)."""


class ResourceNotFound(SageMakerError, code="ResourceNotFound"):
    """A resource that does not exist, for the operations that model this error."""


class ResourceInUse(SageMakerError, code="ResourceInUse"):
    """A resource name already taken (training jobs) or a resource busy."""


class ResourceLimitExceeded(SageMakerError, code="ResourceLimitExceeded"):
    """Too many resources of a kind (local limits: running endpoints, training jobs)."""


class UnknownOperationException(SageMakerError, code="UnknownOperationException"):
    """An `X-Amz-Target` this service does not implement."""


class SerializationException(SageMakerError, code="SerializationException"):
    """A request body that is not a JSON object."""


class InternalFailure(SageMakerError, code="InternalFailure", status=500):
    """An unexpected failure inside sagemaker-local."""


# Authorization of role credentials (asked of the emulator: authorization.py).
class AccessDeniedException(SageMakerError, code="AccessDeniedException"):
    """The caller's policies do not allow the action (AWS: 400 on SageMaker's APIs)."""


class UnrecognizedClientException(SageMakerError, code="UnrecognizedClientException"):
    """A session token that does not belong to the access key."""


class ExpiredTokenException(SageMakerError, code="ExpiredTokenException"):
    """Credentials of an expired STS session."""


# Runtime (service `sagemaker-runtime`).
class RuntimeValidationError(SageMakerError, code="ValidationError"):
    """The runtime's 400 `ValidationError` (also how AWS answers an unknown endpoint)."""


class ModelError(SageMakerError, code="ModelError", status=424):
    """The model container answered an error or did not answer: 424 with its original status."""


class ServiceUnavailable(SageMakerError, code="ServiceUnavailable", status=503):
    """The runtime cannot serve now, retryable: shutting down, model server busy or replaced."""


class PayloadTooLarge(SageMakerError, code="", status=413):
    """A body above the InvokeEndpoint limit: AWS's front door answers a bare 413."""

    def body(self) -> dict[str, Any]:
        """No `__type`: botocore then reports the HTTP status ("413") as the error code."""
        return {"message": self.message}
