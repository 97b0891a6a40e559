"""State machines call AWS with their execution role, as on AWS.

On AWS, Step Functions assumes a state machine's `roleArn` (or a Task's `Credentials.RoleArn`)
and signs every call its tasks make with those temporary credentials, so the role's policies
decide what a workflow may do. moto's interpreter signed with fixed dummy keys, which the
emulator treats as the account's administrator: a state machine whose role may not invoke a
function still ran it. Here:

- each call the interpreter makes (Lambda in both Resource forms, and every other service
  integration) is signed with credentials from the emulator's own STS `AssumeRole` of the
  task's role, reused per role until `REFRESH_MARGIN_S` before they expire, so that IAM
  enforcement (`iam_enforcement`) evaluates the role's policies;
- CreateStateMachine, and UpdateStateMachine with a new `roleArn`, fail as AWS does when the
  role does not exist or its trust policy does not let `states.amazonaws.com` (or the regional
  `states.<region>.amazonaws.com`) assume it: `AccessDeniedException`, "Neither the global
  service principal states.amazonaws.com, nor the regional one is authorized to assume the
  provided role."

`LOCAL_AWS_IAM_ENFORCE=0` turns the policy checks off; the calls still carry role credentials.
"""

from __future__ import annotations

import json
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SERVICE_PRINCIPAL = "states.amazonaws.com"
# As AWS: an hour, refreshed a while before the end so no call is signed with expiring keys.
SESSION_S = 3600
REFRESH_MARGIN_S = 300
TRUST_ERROR = (
    "Neither the global service principal states.amazonaws.com, nor the regional one is "
    "authorized to assume the provided role."
)


@dataclass(frozen=True)
class RoleCredentials:
    """Temporary credentials of one assumed-role session."""

    role_arn: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # time.monotonic() seconds


def _account_of(role_arn: str) -> str | None:
    parts = role_arn.split(":")
    if len(parts) < 6 or parts[2] != "iam" or not parts[5].startswith("role/"):
        return None
    return parts[4] or None


def _session_name() -> str:
    # AWS names Step Functions' sessions with 32 random letters.
    return "".join(secrets.choice(string.ascii_letters) for _ in range(32))


class RoleSessions:
    """AssumeRole credentials per role ARN, from the emulator's STS, reused until near expiry."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, session_s: int = SESSION_S
    ) -> None:
        self._clock = clock
        self._session_s = session_s
        self._sessions: dict[str, RoleCredentials] = {}
        self._lock = threading.Lock()
        self.assumed = 0

    def credentials(self, role_arn: str) -> RoleCredentials | None:
        """The role's current credentials (None: not a role ARN, so no session can exist)."""
        account = _account_of(role_arn)
        if account is None:
            return None
        with self._lock:
            current = self._sessions.get(role_arn)
            if current is not None and current.expires_at - REFRESH_MARGIN_S > self._clock():
                return current
            fresh = self._assume(account, role_arn)
            self._sessions[role_arn] = fresh
            return fresh

    def _assume(self, account: str, role_arn: str) -> RoleCredentials:
        from moto.sts.models import sts_backends

        started = self._clock()
        session = sts_backends[account]["global"].assume_role(
            region_name="us-east-1",
            role_session_name=_session_name(),
            role_arn=role_arn,
            policy="",
            duration=self._session_s,
            external_id="",
        )
        self.assumed += 1
        return RoleCredentials(
            role_arn=role_arn,
            access_key_id=session.access_key_id,
            secret_access_key=session.secret_access_key,
            session_token=session.session_token,
            expires_at=started + self._session_s,
        )

    def __len__(self) -> int:
        return len(self._sessions)


SESSIONS = RoleSessions()


def credentials_for(state_credentials: Any) -> RoleCredentials | None:
    """Credentials for a task's `StateCredentials` (None: sign as moto did, the administrator)."""
    role_arn = getattr(state_credentials, "role_arn", None)
    if not isinstance(role_arn, str) or not role_arn:
        return None
    return SESSIONS.credentials(role_arn)


def client_arguments(credentials: RoleCredentials | None) -> dict[str, str]:
    """boto3 client keyword arguments that sign with these credentials."""
    if credentials is None:
        return {"aws_access_key_id": "ak", "aws_secret_access_key": "sk"}
    return {
        "aws_access_key_id": credentials.access_key_id,
        "aws_secret_access_key": credentials.secret_access_key,
        "aws_session_token": credentials.session_token,
    }


# ---------------------------------------------------------------------------------------------
# Trust policy at create


def service_may_assume(role_arn: str, region: str) -> bool:
    """Whether the role exists and its trust policy lets Step Functions assume it."""
    from moto.iam.models import iam_backends

    account = _account_of(role_arn)
    if account is None:
        return False
    try:
        role = iam_backends[account]["global"].get_role_by_arn(role_arn)
        document = json.loads(role.assume_role_policy_document or "{}")
    except Exception:  # no such role, or a trust policy that is not JSON: nobody may assume
        return False
    principals = {SERVICE_PRINCIPAL, f"states.{region}.amazonaws.com"}
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    allowed = False
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, dict) or not _names_assume_role(statement):
            continue
        principal = statement.get("Principal", {})
        services = principal.get("Service", []) if isinstance(principal, dict) else []
        services = services if isinstance(services, list) else [services]
        if principal != "*" and not principals.intersection(services):
            continue
        if statement.get("Effect") == "Deny":
            return False  # an explicit Deny wins over any Allow
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _names_assume_role(statement: dict[str, Any]) -> bool:
    actions = statement.get("Action", [])
    actions = actions if isinstance(actions, list) else [actions]
    return any(str(a).lower() in ("sts:assumerole", "sts:*", "*") for a in actions)


def _require_trust(role_arn: str, region: str) -> None:
    if service_may_assume(role_arn, region):
        return
    from moto.core.exceptions import AWSError

    class AccessDeniedException(AWSError):
        TYPE = "AccessDeniedException"
        STATUS = 400

    raise AccessDeniedException(TRUST_ERROR)


# ---------------------------------------------------------------------------------------------
# Installation


def interpreter_client_config(**extra: Any) -> Any:
    """The botocore `Config` of moto's `boto_client_for` (moto 5.2.5), plus `extra` options."""
    from botocore.config import Config
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds

    return Config(
        parameter_validation=False,
        retries={"max_attempts": 0, "total_max_attempts": 1},
        connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
        read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
        **extra,
    )


def role_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    """moto's `boto_client_for` (moto 5.2.5), signing with the task's role."""
    import boto3
    from moto.core.models import botocore_stubber
    from moto.settings import moto_server_port

    kwargs: dict[str, Any] = {}
    if not botocore_stubber.enabled:
        kwargs["endpoint_url"] = f"http://localhost:{moto_server_port()}"
    return boto3.client(
        region_name=region,
        service_name=service,
        config=interpreter_client_config(),
        **client_arguments(credentials_for(state_credentials)),
        **kwargs,
    )


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Sign interpreter calls with the task's role and check trust at create (idempotent).

    `stepfunctions_speedups` replaces `boto_client_for` with its cached clients (before or
    after this), which take their credentials from `credentials_for` too.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        _patch_client_factory()
        _patch_role_validation()
        _installed = True


def _patch_client_factory() -> None:
    # The parser imports every state's module; each holds its own `boto_client_for` name.
    import moto.stepfunctions.parser.asl.parse.preprocessor  # noqa: F401
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = boto_client.boto_client_for
    if original.__module__ != boto_client.__name__:
        return  # already replaced (the speedups' cache), and that takes credentials from here
    for name, module in list(sys.modules.items()):
        if not name.startswith("moto.stepfunctions.parser") or module is None:
            continue
        if getattr(module, "boto_client_for", None) is original:
            module.boto_client_for = role_client_for  # type: ignore[attr-defined]
    boto_client.boto_client_for = role_client_for  # type: ignore[assignment]


def _patch_role_validation() -> None:
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    validate_role_arn = StepFunctionBackend._validate_role_arn
    update_state_machine = StepFunctionsParserBackend.update_state_machine

    def _validate_role_arn(self: Any, role_arn: str) -> None:
        validate_role_arn(self, role_arn)  # the ARN's shape first: InvalidArn, as before
        _require_trust(role_arn, self.region_name)

    def _update_state_machine(self: Any, arn: str, *args: Any, **kwargs: Any) -> Any:
        role_arn = kwargs.get("role_arn", args[1] if len(args) > 1 else None)
        if role_arn:
            self.describe_state_machine(arn)  # StateMachineDoesNotExist comes first
            validate_role_arn(self, role_arn)
            _require_trust(role_arn, self.region_name)
        return update_state_machine(self, arn, *args, **kwargs)

    StepFunctionBackend._validate_role_arn = _validate_role_arn  # type: ignore[method-assign]
    StepFunctionsParserBackend.update_state_machine = _update_state_machine  # type: ignore[method-assign]
