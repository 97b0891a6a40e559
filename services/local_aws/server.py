"""The embedded AWS emulator: moto's server with Step Functions execution and a real Lambda runtime.

moto serves S3, IAM, STS, Lambda, Step Functions and CloudWatch Logs. Two things are changed:
Step Functions executes state machines (moto's own interpreter, which calls Lambda back on this
server), and Lambda runs code in warm `awslambdaric` workers (`lambda_runtime`) instead of
moto's Docker path.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from .. import browser_guard
from . import (
    iam_authorize,
    iam_enforcement,
    persistence,
    stepfunctions_parity,
    stepfunctions_speedups,
)
from .lambda_runtime import LambdaRuntime
from .lambda_worker import Worker

log = logging.getLogger("local_aws")

SERVICES = ("s3", "iam", "sts", "lambda", "stepfunctions", "logs")
HEALTH_PATH = "/_local_aws/health"


@dataclass
class EmulatorConfig:
    """Settings of one emulator process."""

    host: str = "127.0.0.1"
    port: int = 4566
    state_dir: Path = field(default_factory=lambda: Path(".state"))
    lambda_concurrency: int = 16
    lambda_idle_timeout_s: float = 900.0
    # Lambda code sees only the standard library and boto3, as on AWS (False: the whole venv).
    lambda_isolation: bool = True
    # Extra variables for Lambda code, e.g. AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME for sagemaker-local.
    lambda_env: dict[str, str] = field(default_factory=dict)
    # Step Functions interpreter with cached ASL programs and boto3 clients (see that module).
    sfn_speedups: bool = field(default_factory=stepfunctions_speedups.enabled_by_environment)
    # State kept under state_dir/persist across restarts and crashes (see persistence.py).
    persist: bool = field(default_factory=persistence.enabled_by_environment)
    # IAM policies enforced for role (STS session) credentials (see iam_enforcement.py).
    iam_enforce: bool = field(default_factory=iam_enforcement.enabled_by_environment)


class Emulator:
    """One running emulator: the WSGI server, the patched moto backends and the Lambda runtime."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self._server: BaseWSGIServer | None = None
        self.persistence: persistence.Persistence | None = None
        self.restored: dict[str, Any] = {}
        self.runtime = LambdaRuntime(
            config.state_dir,
            max_concurrency=config.lambda_concurrency,
            idle_timeout_s=config.lambda_idle_timeout_s,
            extra_env=dict(config.lambda_env),
            log_sink=self._write_logs,
            isolate=config.lambda_isolation,
        )
        self._async_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lambda-event")
        self._app: Any = None
        self._stepfunctions_lock = threading.Lock()
        self._stepfunctions_ready = False

    def bind(self) -> None:
        """Configure moto and bind the listening socket (fails fast if the port is taken)."""
        import os

        from moto.core.config import default_user_config
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        default_user_config["stepfunctions"]["execute_state_machine"] = True
        default_user_config["core"]["service_whitelist"] = None
        _install_lambda_runtime(self)
        if self.config.persist:
            self.persistence = persistence.Persistence(self.config.state_dir / "persist")
            self.restored = self.persistence.load()
            log.info("state restored from %s: %s", self.persistence.root, self.restored)
        moto_app = DomainDispatcherApplication(create_backend_app)
        app = self._wsgi(moto_app)
        self._server = make_server(
            self.config.host,
            self.config.port,
            app,
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        self._app = app
        self.config.port = self._server.server_address[1]
        # moto's Step Functions interpreter calls Lambda on localhost:$MOTO_PORT.
        os.environ["MOTO_PORT"] = str(self.config.port)
        self.runtime.extra_env.setdefault("AWS_ENDPOINT_URL", self.endpoint_url)

    def _install_stepfunctions(self) -> None:
        """Step Functions' patches, on the first Step Functions request, not at start-up.

        They import moto's ASL parser and every state module (3.2 s and ~140 MB PSS measured
        in a fresh interpreter): an emulator used only for S3 or Lambda never pays that.
        """
        with self._stepfunctions_lock:
            if self._stepfunctions_ready:
                return
            stepfunctions_parity.install()  # JSONata, Express, TestState, Wait/Retry time
            if self.config.sfn_speedups:
                stepfunctions_speedups.install(self._app, self._server)
            if self.persistence is not None:
                self.persistence.install_stepfunctions_hooks()
            self._stepfunctions_ready = True

    @property
    def endpoint_url(self) -> str:
        """The URL clients (and Lambda code) use to reach this emulator."""
        return f"http://{_client_host(self.config.host)}:{self.config.port}"

    def _wsgi(self, moto_app: Any) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            # Before moto (and its permissive CORS) sees anything: see services/browser_guard.py.
            refused = browser_guard.wsgi_refusal(environ, (self.config.host,))
            if refused is not None:
                return _refuse(start_response, *refused)
            if environ.get("PATH_INFO") == HEALTH_PATH:
                body = json.dumps(self.health()).encode()
                start_response(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
            if environ.get("PATH_INFO") == iam_authorize.PATH:  # sagemaker-local asks here
                return iam_authorize.serve(environ, start_response, self.config.iam_enforce)
            if not self._stepfunctions_ready and _is_stepfunctions(environ):
                self._install_stepfunctions()
            if self.config.iam_enforce:
                denied = _iam_denial(environ)
                if denied is not None:
                    start_response(f"{denied.status} Forbidden", denied.headers)
                    return [denied.body]
            store = self.persistence
            if store is None:
                return moto_app(environ, start_response)
            return _persisting(store, moto_app, environ, start_response)

        return app

    def health(self) -> dict[str, Any]:
        """What the readiness endpoint answers."""
        speedups = stepfunctions_speedups.installed()
        return {
            "status": "running",
            "services": list(SERVICES),
            "port": self.config.port,
            "uptime_s": round(time.time() - self.started_at, 3),
            "lambda_workers": self.runtime.worker_count(),
            "lambda_concurrency": self.config.lambda_concurrency,
            "lambda_isolation": self.config.lambda_isolation,
            "state_dir": str(self.config.state_dir),
            "persistence": self.persistence.stats if self.persistence else False,
            "restored": self.restored,
            "iam_enforcement": self.config.iam_enforce,
            "stepfunctions_speedups": (
                speedups.stats()
                if speedups
                else {"installed": False}  # on the first Step Functions request
                if self.config.sfn_speedups
                else None
            ),
        }

    def serve_forever(self) -> None:
        """Serve requests until `shutdown` is called."""
        assert self._server is not None, "call bind() first"
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop serving and stop every Lambda worker."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
        self._async_pool.shutdown(wait=False, cancel_futures=True)
        self.runtime.shutdown()
        if self.persistence is not None:
            self.persistence.close()

    def _write_logs(self, worker: Worker, lines: list[str]) -> None:
        _write_cloudwatch_logs(worker, lines)
        if self.persistence is not None:
            self.persistence.changed_in_background("logs")


def _persisting(
    store: persistence.Persistence, moto_app: Any, environ: dict[str, Any], start_response: Any
) -> Any:
    """Run a request, then persist its change before the response is sent (headers included)."""
    body: bytes | None = None
    if str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        # IAM/STS name their action in the form body; moto must still read it afterwards.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
    status: list[int] = []

    def recording_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(int(status_line.split(None, 1)[0]))
        return start_response(status_line, headers, exc_info)

    result = moto_app(environ, recording_start_response)
    if status:
        store.after_request(environ, body, status[0])
    return result


def _is_stepfunctions(environ: dict[str, Any]) -> bool:
    return str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("AWSStepFunctions.")


def _iam_denial(environ: dict[str, Any]) -> iam_enforcement.Denial | None:
    """Check role credentials before moto acts; only then is a JSON/query body read here."""
    signed = iam_enforcement.access_key_of(environ)
    if signed is None or iam_enforcement.session_of(signed[0]) is None:
        return None
    body = b""
    if signed[2] in ("states", "logs", "iam", "sts"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
    return iam_enforcement.check(environ, body)


def _refuse(start_response: Any, status: int, message: str) -> list[bytes]:
    """An AWS-shaped AccessDenied, with no Access-Control-Allow-* header."""
    body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
    start_response(
        f"{status} Forbidden",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _write_cloudwatch_logs(worker: Worker, lines: list[str]) -> None:
    from moto.logs.models import logs_backends

    spec = worker.spec
    backend = logs_backends[spec.account_id][spec.region]
    group = spec.logging.log_group or f"/aws/lambda/{spec.function_name}"
    try:
        backend.ensure_log_group(group)
        backend.ensure_log_stream(group, worker.log_stream_name)
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": line} for line in lines if line]
        if events:
            backend.put_log_events(group, worker.log_stream_name, events)
    except Exception:  # logging must never fail an invocation
        log.exception("could not write CloudWatch logs for %s", spec.function_name)


def _install_lambda_runtime(emulator: Emulator) -> None:
    """Replace moto's Docker-based Lambda invocation with the real runtime, as AWS answers it."""
    from . import lambda_service

    lambda_service.install(emulator)
