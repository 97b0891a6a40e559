"""The embedded AWS emulator: moto's server with Step Functions execution and a real Lambda runtime.

moto serves S3, IAM, STS, Lambda, Step Functions and CloudWatch Logs. Two things are changed:
Step Functions executes state machines (moto's own interpreter, which calls Lambda back on this
server), and Lambda runs code in warm `awslambdaric` workers (`lambda_runtime`) instead of
moto's Docker path.

Start-up is lazy. The socket is bound and the health check answered before moto is imported
(moto and its boto3 cost ~0.4 s and ~45 MB): a fresh emulator loads moto on its first other
request (`load_backends`), and moto loads each service's backend on that service's first request.
An emulator with persisted state restores it before it answers, except Step Functions, restored
with its patches on the first Step Functions request (they import moto's ASL parser).
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

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .. import browser_guard
from . import (
    iam_authorize,
    iam_enforcement,
    keep_alive,
    lambda_provisioned,
    persistence,
    stepfunctions_speedups,
    stepfunctions_threads,
    whole_responses,
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
    lambda_idle_timeout_s: float = 300.0
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
    # Load moto in the background once bound, not on the first request (`make up`: a deploy
    # and sagemaker-local's STS call follow at once). Off: a fresh emulator stays small.
    preload: bool = False


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
        self._moto_app: Any = None  # moto's dispatcher, once `load_backends` ran
        self._backends_lock = threading.Lock()
        self._stepfunctions_lock = threading.Lock()
        self._stepfunctions_ready = False

    def bind(self) -> None:
        """Bind the listening socket (fails fast if the port is taken); restore persisted state.

        moto itself is not imported here unless there is state to restore: see `load_backends`.
        """
        import os

        if self.config.persist:
            self.persistence = persistence.Persistence(self.config.state_dir / "persist")
        self._app = self._wsgi()
        keep_alive.install()
        self._server = make_server(
            self.config.host,
            self.config.port,
            self._app,
            threaded=True,
            request_handler=_LazyMotoHandler,
        )
        self._server.emulator = self  # type: ignore[attr-defined]  # for _LazyMotoHandler
        self.config.port = self._server.server_address[1]
        # moto's Step Functions interpreter calls Lambda on localhost:$MOTO_PORT.
        os.environ["MOTO_PORT"] = str(self.config.port)
        self.runtime.extra_env.setdefault("AWS_ENDPOINT_URL", self.endpoint_url)
        if self.persistence is not None and self.persistence.has_state():
            # A restart answers only once its state is back (a failed restore exits here).
            self.load_backends()
        elif self.config.preload:
            threading.Thread(target=self._preload, daemon=True, name="preload").start()

    def _preload(self) -> None:
        try:
            self.load_backends()
        except Exception:  # the first request retries it and answers 500 with the traceback
            log.exception("loading moto in the background failed")

    def load_backends(self) -> None:
        """moto, its Lambda patches and the restored state: once, before the first request.

        Step Functions (its patches and its state) waits for its own first request.
        """
        if self._moto_app is not None:
            return
        with self._backends_lock:
            if self._moto_app is not None:
                return
            started = time.perf_counter()
            from moto.core.config import default_user_config
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                create_backend_app,
            )

            from . import moto_dispatch, moto_imports

            moto_imports.install()  # before anything imports the ASL parser (moto.batch -> ec2)
            moto_dispatch.install()
            default_user_config["stepfunctions"]["execute_state_machine"] = True
            default_user_config["core"]["service_whitelist"] = None
            _install_lambda_runtime(self)
            if self.persistence is not None:
                self.restored = self.persistence.load()
                # Provisioned environments are processes: a restart starts them again.
                self.restored["provisioned_concurrency"] = lambda_provisioned.restore_configs()
                log.info("state restored from %s: %s", self.persistence.root, self.restored)
            if self._server is not None:  # new connections get moto's handler directly
                self._server.RequestHandlerClass = whole_responses.moto_handler()
            self._moto_app = DomainDispatcherApplication(create_backend_app)
            _freeze_loaded_objects()
            log.info("moto loaded in %.0f ms", (time.perf_counter() - started) * 1000)

    def _install_stepfunctions(self) -> None:
        """Step Functions' patches, on the first Step Functions request, not at start-up.

        They import moto's ASL parser and every state module (0.2-0.5 s and ~13 MB with
        `moto_imports`; 2.2-3.3 s and ~110 MB without): S3 or Lambda alone never pays that.
        """
        with self._stepfunctions_lock:
            if self._stepfunctions_ready:
                return
            from . import stepfunctions_parity  # imports jsonata: only Step Functions needs it

            stepfunctions_parity.install()  # JSONata, Express, TestState, Wait/Retry time
            if self.config.sfn_speedups:
                stepfunctions_speedups.install(self._app, self._server, self.config.iam_enforce)
            if self.persistence is not None:
                self.restored.update(self.persistence.load_stepfunctions())
            _freeze_loaded_objects()
            self._stepfunctions_ready = True

    @property
    def endpoint_url(self) -> str:
        """The URL clients (and Lambda code) use to reach this emulator."""
        return f"http://{_client_host(self.config.host)}:{self.config.port}"

    def _wsgi(self) -> Any:
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
            self.load_backends()  # a no-op after the first request (moto's handler loads it)
            if environ.get("PATH_INFO") == iam_authorize.PATH:  # sagemaker-local asks here
                return iam_authorize.serve(environ, start_response, self.config.iam_enforce)
            if not self._stepfunctions_ready and _is_stepfunctions(environ):
                self._install_stepfunctions()
            if self.config.iam_enforce:
                denied = _iam_denial(environ)
                if denied is not None:
                    # With its length: a client that sent `Expect: 100-continue` and its body
                    # would otherwise wait for the end of the connection while werkzeug waits
                    # for the client to finish (a denied S3 PUT hung until its read timeout).
                    length = ("Content-Length", str(len(denied.body)))
                    start_response(f"{denied.status} Forbidden", [*denied.headers, length])
                    return [denied.body]
            store = self.persistence
            if store is None:
                return self._moto_app(environ, start_response)
            return _persisting(store, self._moto_app, environ, start_response)

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
            # False until the first request other than this one (or a restore) imported moto.
            "backends_loaded": self._moto_app is not None,
            # False until the first Step Functions request (its patches and restored state).
            "stepfunctions_loaded": self._stepfunctions_ready,
            # Threads moto's interpreter still lists (finished ones are dropped as executions end).
            "stepfunctions_threads_kept": stepfunctions_threads.kept(),
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
        """Stop serving, stop every Lambda worker (all at once), then write and close the state."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
        self._async_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.runtime.shutdown()
        finally:  # the state is written even if a worker could not be stopped
            if self.persistence is not None:
                self.persistence.close()

    def _write_logs(self, worker: Worker, lines: list[str]) -> None:
        if self.persistence is None:
            _write_cloudwatch_logs(worker, lines)
            return
        with self.persistence.guard("logs"):  # not while the Logs snapshot is pickled
            _write_cloudwatch_logs(worker, lines)
        self.persistence.changed_in_background("logs")


class _LazyMotoHandler(keep_alive.KeepAlive, whole_responses.WholeResponses, WSGIRequestHandler):
    """werkzeug's request handler until moto is loaded; then moto's, for every request.

    The health check is answered without moto. Any other request loads moto first and then has
    its environ built by moto's handler (which keeps the underscores of S3 metadata headers):
    this handler object becomes one of moto's, as every later connection's is from the start.
    """

    def make_environ(self) -> Any:
        """The WSGI environ; loads moto first unless this is the health check."""
        if self.path.partition("?")[0] != HEALTH_PATH:
            try:
                self.server.emulator.load_backends()  # type: ignore[attr-defined]
            except Exception:  # the application retries it and answers 500 with the traceback
                return super().make_environ()
            # Same base class and no slots: switching this handler to moto's keeps its state.
            self.__class__ = self.server.RequestHandlerClass  # type: ignore[assignment]
            return self.make_environ()
        return super().make_environ()


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

    with store.request_guard(environ, body):  # its snapshot is not pickled meanwhile
        result = moto_app(environ, recording_start_response)
    if status:
        store.after_request(environ, body, status[0])
    return result


def _freeze_loaded_objects() -> None:
    """Keep what was just imported out of the collector's full passes (moto is ~10^6 objects:
    a full collection took ~50 ms, measured, holding the GIL for every request meanwhile)."""
    import gc

    gc.freeze()  # no collect first: it would cost the first request those ~50 ms itself


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
