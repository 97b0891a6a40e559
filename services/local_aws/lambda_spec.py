"""What the Lambda runtime's parts exchange: a function version's spec, its role's credentials,
how a worker is sandboxed, and an invocation's outcome."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

from .lambda_logs import LoggingConfig

LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials of a function's execution role, from STS AssumeRole."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # epoch seconds


@dataclass(frozen=True)
class FunctionSpec:
    """What an execution environment needs to know about one function version."""

    function_name: str
    function_arn: str
    version: str
    handler: str
    runtime: str
    timeout_s: float
    memory_mb: int
    environment: tuple[tuple[str, str], ...]
    code_sha256: str
    region: str
    account_id: str
    reserved_concurrency: int | None = None
    ephemeral_mb: int = 512
    # Layer version ARNs in the function's order (later layers win on conflicting paths).
    layers: tuple[str, ...] = ()
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    role_arn: str = ""

    @property
    def pool_key(self) -> str:
        """Identity of the execution environment: any change gets fresh workers."""
        parts = [
            self.function_arn,
            self.version,
            self.handler,
            self.runtime,
            str(self.timeout_s),
            str(self.memory_mb),
            json.dumps(self.environment),
            self.code_sha256,
            str(self.ephemeral_mb),
            json.dumps(self.layers),
            repr(self.logging),
            self.role_arn,
        ]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """The result of one invocation, shaped as the Invoke API returns it."""

    request_id: str
    payload: bytes
    function_error: str | None
    log_text: str

    def log_tail_b64(self) -> str:
        """The last 4 KB of the invocation's log, base64, as in `x-amz-log-result`."""
        tail = self.log_text.encode("utf-8")[-LOG_TAIL_BYTES:]
        return base64.b64encode(tail).decode("ascii")


@dataclass(frozen=True)
class Sandbox:
    """How a worker's file system view is made (decided once per runtime by a probe)."""

    namespace: bool  # a private mount namespace with its own /tmp
    user_namespace: bool  # entered through a user namespace (not root)
    aws_paths: bool  # code at /var/task, runtime at /var/runtime, layers at /opt
