"""The Lambda control plane as AWS answers it, on top of moto's models.

moto stores functions; this module adds what AWS does and moto does not: LoggingConfig and
DeadLetterConfig kept and returned, `State` Pending -> Active after a create and
`LastUpdateStatus` InProgress -> Successful after an update (briefly, so the deploy's waiters are
exercised), the execution role's trust policy checked at create, at most five layers, and Invoke
served by the real runtime with throttling (TooManyRequestsException) and, for
`InvocationType=Event`, AWS's queue with retries and destinations (`lambda_async`);
ProvisionedConcurrencyConfig in `lambda_provisioned`, version numbers and deletion in
`lambda_versions`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from . import lambda_provisioned, lambda_versions
from .lambda_async import EventQueue
from .lambda_concurrency import Throttled
from .lambda_logs import LoggingConfig
from .lambda_spec import Credentials, FunctionSpec

if TYPE_CHECKING:
    from .server import Emulator

log = logging.getLogger("local_aws.lambda")

# How long a new function stays Pending and an update InProgress (0: Active at once).
TRANSITION_S = float(os.environ.get("LOCAL_AWS_LAMBDA_PENDING_S", "0.2"))
MAX_LAYERS = 5
# Execution role sessions last this long; workers are recycled before they expire.
ROLE_SESSION_S = 3600
_TRUST_ERROR = "The role defined for the function cannot be assumed by Lambda."


def spec_of(fn: Any) -> FunctionSpec:
    """What the runtime needs to know about a moto function."""
    environment = tuple(sorted((str(k), str(v)) for k, v in (fn.environment_vars or {}).items()))
    reserved = fn.reserved_concurrency
    return FunctionSpec(
        function_name=fn.function_name,
        function_arn=fn.function_arn,
        version=str(fn.version),
        handler=fn.handler,
        runtime=fn.run_time or "python3.12",
        timeout_s=float(fn.timeout or 3),
        memory_mb=int(fn.memory_size or 128),
        environment=environment,
        code_sha256=fn.code_sha_256,
        region=fn.region,
        account_id=fn.account_id,
        reserved_concurrency=int(reserved) if reserved is not None else None,
        ephemeral_mb=int(fn.ephemeral_storage or 512),
        layers=tuple(layer["Arn"] for layer in fn.layers or ()),
        logging=LoggingConfig.from_api(getattr(fn, "logging_config", None), fn.function_name),
        role_arn=fn.role,
    )


def layer_zips(fn: Any) -> list[bytes]:
    """The function's layers' archives, in its order."""
    from moto.awslambda.models import lambda_backends

    backend = lambda_backends[fn.account_id][fn.region]
    archives = []
    for layer in fn.layers or ():
        version = backend.layers_versions_by_arn(layer["Arn"])
        if version is not None:
            archives.append(version.code_bytes)
    return archives


def role_credentials(spec: FunctionSpec) -> Credentials | None:
    """Temporary credentials of the function's role, from the emulator's own STS."""
    from moto.sts.models import sts_backends

    if not spec.role_arn:
        return None
    backend = sts_backends[spec.account_id]["global"]
    session = backend.assume_role(
        region_name=spec.region,
        role_session_name=spec.function_name[:64],
        role_arn=spec.role_arn,
        policy="",
        duration=ROLE_SESSION_S,
        external_id="",
    )
    return Credentials(
        access_key_id=session.access_key_id,
        secret_access_key=session.secret_access_key,
        session_token=session.session_token,
        expires_at=time.time() + ROLE_SESSION_S,
    )


def lambda_may_assume(account_id: str, role_arn: str) -> bool:
    """Whether the role exists and its trust policy lets lambda.amazonaws.com assume it."""
    from moto.iam.models import iam_backends

    try:
        role = iam_backends[account_id]["global"].get_role_by_arn(role_arn)
    except Exception:
        return False
    try:
        document = json.loads(role.assume_role_policy_document or "{}")
    except ValueError:
        return False
    statements = document.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        if not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
            continue
        principal = statement.get("Principal", {})
        services = principal.get("Service", []) if isinstance(principal, dict) else []
        services = services if isinstance(services, list) else [services]
        if principal == "*" or "lambda.amazonaws.com" in services:
            return True
    return False


def install(emulator: Emulator) -> None:
    """Patch moto's Lambda models and Invoke; wire credentials and logs into the runtime."""
    from moto.awslambda import models
    from moto.awslambda.exceptions import InvalidParameterValueException, LambdaClientError

    runtime = emulator.runtime
    runtime.credentials = role_credentials
    lambda_provisioned.install(runtime, spec_of, layer_zips)
    lambda_versions.install(runtime, spec_of)
    events = EventQueue(runtime, spec_of, layer_zips)
    emulator.lambda_events = events  # type: ignore[attr-defined]

    class InvalidRequestContentException(LambdaClientError):
        def __init__(self, message: str) -> None:
            super().__init__("InvalidRequestContentException", message)

    class ResourceConflictException(LambdaClientError):
        code = 409

        def __init__(self, message: str) -> None:
            super().__init__("ResourceConflictException", message)

    class TooManyRequestsException(LambdaClientError):
        code = 429

        def __init__(self, reason: str) -> None:
            super().__init__("TooManyRequestsException", "Rate Exceeded.")
            body = {"__type": self.error_type, "message": self.message}
            self.description = json.dumps({**body, "Reason": reason, "Type": "User"})

    def check_layers(spec: dict[str, Any]) -> None:
        if len(spec.get("Layers") or ()) > MAX_LAYERS:
            raise InvalidParameterValueException(f"Cannot reference more than {MAX_LAYERS} layers.")

    def check_logging(config: dict[str, Any] | None) -> None:
        if not config:
            return
        log_format = config.get("LogFormat", "Text")
        levels = [config.get("ApplicationLogLevel"), config.get("SystemLogLevel")]
        if log_format != "JSON" and any(levels):
            raise InvalidParameterValueException(
                "Log level settings (ApplicationLogLevel, SystemLogLevel) require LogFormat JSON."
            )

    original_init = models.LambdaFunction.__init__

    def init(self: Any, account_id: str, spec: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        check_layers(spec)
        check_logging(spec.get("LoggingConfig"))
        original_init(self, account_id, spec, *args, **kwargs)
        self.logging_config = spec.get("LoggingConfig") or {}
        self.dead_letter_config = spec.get("DeadLetterConfig") or {}
        self.pending_until = time.monotonic() + TRANSITION_S
        self.updating_until = 0.0

    original_configuration = models.LambdaFunction.get_configuration

    def get_configuration(self: Any, on_create: bool = False) -> dict[str, Any]:
        config = original_configuration(self, on_create)
        config["LoggingConfig"] = LoggingConfig.from_api(
            getattr(self, "logging_config", None), self.function_name
        ).to_api()
        if getattr(self, "dead_letter_config", None):
            config["DeadLetterConfig"] = self.dead_letter_config
        now = time.monotonic()
        if now < getattr(self, "pending_until", 0.0):
            config["State"] = "Pending"
            config["StateReason"] = "The function is being created."
            config["StateReasonCode"] = "Creating"
        else:
            config["State"] = "Active"
        if not on_create:
            updating = now < getattr(self, "updating_until", 0.0)
            config["LastUpdateStatus"] = "InProgress" if updating else "Successful"
            if updating:
                config["LastUpdateStatusReason"] = "The function is being updated."
                config["LastUpdateStatusReasonCode"] = "InProgress"
        return config

    original_update_configuration = models.LambdaFunction.update_configuration

    def update_configuration(self: Any, updates: dict[str, Any]) -> dict[str, Any]:
        check_layers(updates)
        if "LoggingConfig" in updates:
            check_logging(updates["LoggingConfig"])
            self.logging_config = updates["LoggingConfig"] or {}
        if "DeadLetterConfig" in updates:
            self.dead_letter_config = updates["DeadLetterConfig"] or {}
        if "EphemeralStorage" in updates:
            self.ephemeral_storage = updates["EphemeralStorage"]["Size"]
        self.updating_until = time.monotonic() + TRANSITION_S
        return original_update_configuration(self, updates)  # type: ignore[no-any-return]

    original_update_code = models.LambdaFunction.update_function_code

    def update_function_code(self: Any, updated_spec: dict[str, Any]) -> dict[str, Any]:
        self.updating_until = time.monotonic() + TRANSITION_S
        return original_update_code(self, updated_spec)  # type: ignore[no-any-return]

    original_create = models.LambdaBackend.create_function

    def create_function(self: Any, spec: dict[str, Any]) -> Any:
        role = spec.get("Role", "")
        if role and not lambda_may_assume(self.account_id, role):
            raise InvalidParameterValueException(_TRUST_ERROR)
        created = original_create(self, spec)
        runtime.prewarm()  # while the function is Pending
        return created

    def invoke(
        fn: Any, body: str | bytes | None, request_headers: Any, response_headers: Any
    ) -> bytes:
        raw = body.encode() if isinstance(body, str) else (body or b"")
        payload = raw if raw.strip() else b"{}"
        try:
            json.loads(payload)
        except ValueError as error:
            raise InvalidRequestContentException(
                f"Could not parse request body into json: {error}"
            ) from error
        if getattr(fn, "package_type", "Zip") == "Image":
            raise InvalidParameterValueException("Image functions are not supported locally")
        if time.monotonic() < getattr(fn, "pending_until", 0.0):
            raise ResourceConflictException(
                "The operation cannot be performed at this time. "
                "The function is currently in the following state: Pending"
            )
        spec = spec_of(fn)
        invocation_type = request_headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            return b""
        client_context = request_headers.get("X-Amz-Client-Context")
        if invocation_type == "Event":
            response_headers["x-amzn-requestid"] = events.submit(fn, payload)
            return b""
        try:
            outcome = runtime.invoke(
                spec, lambda: fn.code_bytes, payload, client_context, lambda: layer_zips(fn)
            )
        except Throttled as throttled:
            raise TooManyRequestsException(throttled.reason) from throttled
        if outcome.function_error:
            response_headers["x-amz-function-error"] = outcome.function_error
        response_headers["x-amz-executed-version"] = spec.version
        response_headers["x-amz-log-result"] = outcome.log_tail_b64()
        return outcome.payload

    from moto.awslambda import responses

    original_response_invoke = responses.LambdaResponse.invoke

    def response_invoke(self: Any) -> Any:
        # moto reads `qualifier`, boto3 sends `Qualifier`: without this every version and alias
        # invocation would run $LATEST.
        qualifier = self.querystring.get("Qualifier")
        if qualifier and "qualifier" not in self.querystring:
            self.querystring["qualifier"] = qualifier
        return original_response_invoke(self)

    responses.LambdaResponse.invoke = response_invoke  # type: ignore[method-assign]
    models.LambdaFunction.__init__ = init  # type: ignore[method-assign]
    models.LambdaFunction.get_configuration = get_configuration  # type: ignore[method-assign]
    models.LambdaFunction.update_configuration = update_configuration  # type: ignore[method-assign,assignment]
    models.LambdaFunction.update_function_code = update_function_code  # type: ignore[method-assign]
    models.LambdaBackend.create_function = create_function  # type: ignore[method-assign]
    models.LambdaFunction.invoke = invoke  # type: ignore[method-assign,assignment]
