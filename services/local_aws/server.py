"""The embedded AWS emulator: moto's server with Step Functions execution and a real Lambda runtime.

moto serves S3, IAM, STS, Lambda, Step Functions and CloudWatch Logs. Two things are changed:
Step Functions executes state machines (moto's own interpreter, which calls Lambda back on this
server), and Lambda runs code in warm `awslambdaric` workers (`lambda_runtime`) instead of
moto's Docker path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from . import stepfunctions_speedups
from .lambda_runtime import FunctionSpec, LambdaRuntime, Worker

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


class Emulator:
    """One running emulator: the WSGI server, the patched moto backends and the Lambda runtime."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self._server: BaseWSGIServer | None = None
        self.runtime = LambdaRuntime(
            config.state_dir,
            max_concurrency=config.lambda_concurrency,
            idle_timeout_s=config.lambda_idle_timeout_s,
            extra_env=dict(config.lambda_env),
            log_sink=_write_cloudwatch_logs,
            isolate=config.lambda_isolation,
        )
        self._async_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lambda-event")

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
        moto_app = DomainDispatcherApplication(create_backend_app)
        app = self._wsgi(moto_app)
        self._server = make_server(
            self.config.host,
            self.config.port,
            app,
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        if self.config.sfn_speedups:
            stepfunctions_speedups.install(app, self._server)
        self.config.port = self._server.server_address[1]
        # moto's Step Functions interpreter calls Lambda on localhost:$MOTO_PORT.
        os.environ["MOTO_PORT"] = str(self.config.port)
        self.runtime.extra_env.setdefault("AWS_ENDPOINT_URL", self.endpoint_url)

    @property
    def endpoint_url(self) -> str:
        """The URL clients (and Lambda code) use to reach this emulator."""
        return f"http://{_client_host(self.config.host)}:{self.config.port}"

    def _wsgi(self, moto_app: Any) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") == HEALTH_PATH:
                body = json.dumps(self.health()).encode()
                start_response(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
            return moto_app(environ, start_response)

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
            "persistence": False,
            "stepfunctions_speedups": speedups.stats() if speedups else None,
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


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _spec_of(fn: Any) -> FunctionSpec:
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
        reserved_concurrency=int(reserved) if reserved else None,
    )


def _write_cloudwatch_logs(worker: Worker, lines: list[str]) -> None:
    from moto.logs.models import logs_backends

    spec = worker.spec
    backend = logs_backends[spec.account_id][spec.region]
    group = f"/aws/lambda/{spec.function_name}"
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
    """Replace moto's Docker-based Lambda invocation with the real runtime."""
    from moto.awslambda import models
    from moto.awslambda.exceptions import InvalidParameterValueException, LambdaClientError

    class InvalidRequestContentException(LambdaClientError):
        def __init__(self, message: str) -> None:
            super().__init__("InvalidRequestContentException", message)

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
        spec = _spec_of(fn)
        invocation_type = request_headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            return b""
        client_context = request_headers.get("X-Amz-Client-Context")
        if invocation_type == "Event":
            emulator._async_pool.submit(
                emulator.runtime.invoke, spec, lambda: fn.code_bytes, payload, client_context
            )
            return b""
        outcome = emulator.runtime.invoke(spec, lambda: fn.code_bytes, payload, client_context)
        if outcome.function_error:
            response_headers["x-amz-function-error"] = outcome.function_error
        response_headers["x-amz-executed-version"] = spec.version
        response_headers["x-amz-log-result"] = outcome.log_tail_b64()
        return outcome.payload

    models.LambdaFunction.invoke = invoke  # type: ignore[method-assign,assignment]
