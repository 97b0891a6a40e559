"""Faster Step Functions executions in the emulator, with moto's interpreter semantics unchanged.

Profiling a warm execution of the project's workflow (three Lambda tasks) showed where moto's
interpreter spends its time besides the Lambdas themselves:

- every execution parses its definition again with the ANTLR-generated ASL parser (~90 ms of
  pure-Python CPU for the project's ASL, over a third of the execution);
- every task builds a new boto3 client (`boto_client_for`, ~10 ms each) and so a new connection
  to this same server.

Both are removed here, and nothing else changes: the same parser builds the same program, and
the same botocore client, with the same configuration, sends the same requests.

- Parsed programs are cached by definition text. A program is a tree of components whose
  evaluation keeps all its state in the execution's `Environment` (moto already evaluates one
  program tree concurrently in Map iterations). The one lazily set attribute, each component's
  `heap_key` (its key into the environment's heap, used for retry counters), is assigned before
  the program is shared, so concurrent executions cannot race on it.
- boto3 clients are cached per (region, service, endpoint, execution role): botocore clients
  are thread-safe. Each signs with its role's credentials (`stepfunctions_roles`).
- The interpreter's Lambda `Invoke` goes straight to the Lambda backend, IAM checked as over
  HTTP (`stepfunctions_lambda`). Its other Lambda calls are handed to this server's own WSGI
  application in-process instead of over a loopback socket (werkzeug closes every connection,
  so each paid a TCP connection, a server thread and request parsing). The request is the same
  signed request botocore would send, turned into the WSGI environ by werkzeug's own request
  handler code, and the response is parsed by botocore as usual: the Lambda backend, its error
  codes, `FunctionError` and the interpreter's error names (`Lambda.<Code>`, the function's
  `errorType`) are exactly those of the HTTP path.
- JSONPath expressions (`$.Payload.body`, ...) are compiled once per path string; moto compiled
  each one on every use, building a PLY lexer and parser each time. Compiled expressions are
  immutable (`find` returns new objects), so sharing them is safe.
- Executions are found by name and ARN through an index (`stepfunctions_index`), not by a
  walk over every execution of the state machine on each start and each describe.

(moto's per-request dispatch lookups are cached for every service: `moto_dispatch`.)

`LOCAL_AWS_SFN_SPEEDUPS=0` turns all of this off (moto's code path as shipped), for comparison.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from . import stepfunctions_index, stepfunctions_lambda, stepfunctions_roles
from .stepfunctions_lambda import DirectLambda

log = logging.getLogger("local_aws.stepfunctions")

ENV_SWITCH = "LOCAL_AWS_SFN_SPEEDUPS"
PROGRAM_CACHE_SIZE = 128
# Connections kept per cached client: more than the executions one emulator runs at once.
CLIENT_POOL_CONNECTIONS = 64


def enabled_by_environment() -> bool:
    """Whether the environment asks for the speedups (default: yes)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class ProgramCache:
    """Parsed ASL programs by definition text, least recently used evicted."""

    def __init__(self, size: int = PROGRAM_CACHE_SIZE) -> None:
        self.size = size
        self._programs: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def program(self, definition: str) -> Any:
        """The evaluable program of a definition, parsed once."""
        with self._lock:
            program = self._programs.get(definition)
            if program is not None:
                self._programs.move_to_end(definition)
                self.hits += 1
                return program
            # Parsing holds the GIL throughout, so doing it under the lock costs no parallelism
            # and lets executions started together share one parse.
            from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

            program = AmazonStateLanguageParser.parse(definition)[0]
            assign_heap_keys(program)
            self._programs[definition] = program
            if len(self._programs) > self.size:
                self._programs.popitem(last=False)
            self.misses += 1
            return program

    def __len__(self) -> int:
        return len(self._programs)


def _components(root: Any) -> Iterator[Any]:
    """Every component reachable from `root` (through attributes, lists, tuples, dicts)."""
    from moto.stepfunctions.parser.asl.component.component import Component

    seen: set[int] = set()
    pending = [root]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Component):
            yield item
            pending.extend(vars(item).values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())


def assign_heap_keys(program: Any) -> int:
    """Give every component of a program its heap key now; returns how many components."""
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent

    count = 0
    for component in _components(program):
        if isinstance(component, EvalComponent):
            _ = component.heap_key
        count += 1
    return count


class ClientCache:
    """One boto3 client per (region, service, endpoint, role) for the interpreter's tasks."""

    def __init__(
        self, transport: InProcessTransport | None = None, iam_enforce: bool = True
    ) -> None:
        self.transport = transport
        self.iam_enforce = iam_enforce
        # Each client signs with its role's credentials (stepfunctions_roles): a role's client
        # is replaced when its credentials are refreshed.
        self._clients: dict[tuple[str, str, str | None, str | None], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self.created = 0
        self.requests = 0

    def client_for(self, region: str, service: str, state_credentials: Any = None) -> Any:
        """What moto's `boto_client_for` returns, built once and then shared."""
        from moto.core.models import botocore_stubber
        from moto.settings import moto_server_port

        credentials = stepfunctions_roles.credentials_for(state_credentials)
        # As moto: in-process mocks (botocore stubber) need no endpoint; the server needs ours.
        endpoint = None if botocore_stubber.enabled else f"http://localhost:{moto_server_port()}"
        key = (region, service, endpoint, credentials.role_arn if credentials else None)
        with self._lock:
            self.requests += 1
            signed_with, client = self._clients.get(key, (None, None))
            if client is None or signed_with is not credentials:
                client = self._new_client(region, service, endpoint, credentials)
                if endpoint and self.transport and service in IN_PROCESS_SERVICES:
                    client.meta.events.register("before-send", self.transport.send)
                    if service == "lambda":  # Invoke without the request at all
                        client = DirectLambda(client, region, credentials, self.iam_enforce)
                self._clients[key] = (credentials, client)
                self.created += 1
            return client

    @staticmethod
    def _new_client(region: str, service: str, endpoint: str | None, credentials: Any) -> Any:
        # The configuration of moto's boto_client_for (moto 5.2.5), plus a larger pool.
        import boto3

        kwargs = {"endpoint_url": endpoint} if endpoint else {}
        return boto3.session.Session().client(
            region_name=region,
            service_name=service,
            config=stepfunctions_roles.interpreter_client_config(
                max_pool_connections=CLIENT_POOL_CONNECTIONS
            ),
            **stepfunctions_roles.client_arguments(credentials),
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self._clients)


class InProcessTransport:
    """Sends a botocore request to this server's WSGI application without a socket.

    The WSGI environ is built by werkzeug's (and moto's) own request handler code from the same
    bytes a socket would carry, so the application cannot tell the difference; an exception in
    the application becomes werkzeug's 500 response, as on the socket path.
    """

    def __init__(self, app: Callable[..., Any], server: Any) -> None:
        self.app = app
        self.server = server
        self.requests = 0
        self._lock = threading.Lock()

    def send(self, request: Any, **kwargs: Any) -> Any:
        """botocore `before-send` hook: the response, so nothing goes over the network."""
        from botocore.awsrequest import AWSResponse
        from botocore.compat import HTTPHeaders
        from moto.core.botocore_stubber import MockRawResponse
        from werkzeug.exceptions import InternalServerError
        from werkzeug.test import run_wsgi_app

        environ = self.environ(request)
        try:
            body_iter, status, headers = run_wsgi_app(self.app, environ, buffered=True)
            body = b"".join(body_iter)
        except Exception:
            log.exception("Error on in-process request %s %s", request.method, request.url)
            body_iter, status, headers = run_wsgi_app(InternalServerError(), environ, buffered=True)
            body = b"".join(body_iter)
        with self._lock:
            self.requests += 1
        response_headers = HTTPHeaders()
        for name, value in headers.items():
            response_headers[name] = value
        return AWSResponse(
            request.url, int(status.split(None, 1)[0]), response_headers, MockRawResponse(body)
        )

    def environ(self, request: Any) -> dict[str, Any]:
        """The WSGI environ werkzeug's server would build for this request."""
        import http.client

        from moto.moto_server.werkzeug_app import MotoRequestHandler

        url = urlsplit(request.url)
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode("utf-8")
        body = body or b""
        # What http.client puts on the wire: botocore's headers plus Host and Accept-Encoding.
        lines = [f"Host: {url.netloc}"] if "Host" not in request.headers else []
        for name, value in request.headers.items():
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            lines.append(f"{name}: {text}")
        if "Accept-Encoding" not in request.headers:
            lines.append("Accept-Encoding: identity")
        if body and "Content-Length" not in request.headers:
            lines.append(f"Content-Length: {len(body)}")
        raw_headers = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        handler = MotoRequestHandler.__new__(MotoRequestHandler)
        handler.path = url.path + (f"?{url.query}" if url.query else "")
        handler.command = request.method
        handler.request_version = "HTTP/1.1"
        handler.headers = http.client.parse_headers(io.BytesIO(raw_headers))
        handler.client_address = ("127.0.0.1", 0)
        handler.server = self.server
        handler.rfile = io.BytesIO(body)
        handler.connection = None
        environ: dict[str, Any] = handler.make_environ()
        return environ


# Services whose interpreter calls go in-process (the workflow's hot path); others use HTTP.
IN_PROCESS_SERVICES = frozenset({"lambda"})


class Speedups:
    """The installed speedups and their counters."""

    def __init__(
        self, transport: InProcessTransport | None = None, iam_enforce: bool = True
    ) -> None:
        self.programs = ProgramCache()
        self.clients = ClientCache(transport, iam_enforce)
        self.transport = transport

    def stats(self) -> dict[str, int]:
        """Counters for the health endpoint and the tests."""
        return {
            "programs_cached": len(self.programs),
            "program_parses": self.programs.misses,
            "program_cache_hits": self.programs.hits,
            "clients_cached": len(self.clients),
            "clients_created": self.clients.created,
            "client_requests": self.clients.requests,
            "in_process_requests": self.transport.requests if self.transport else 0,
            "direct_lambda_invokes": stepfunctions_lambda.INVOKES.value,
            "role_sessions_assumed": stepfunctions_roles.SESSIONS.assumed,
            "jsonpath_compiled": _compile_jsonpath.cache_info().currsize
            + _compile_jsonpath_ext.cache_info().currsize,
        }


_installed: Speedups | None = None
_install_lock = threading.Lock()


def install(
    app: Callable[..., Any] | None = None, server: Any = None, iam_enforce: bool = True
) -> Speedups:
    """Patch moto (idempotent); with this server's WSGI `app` and `server`, Lambda in-process
    (`iam_enforce`: whether that app checks role credentials, so the direct Invoke does)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        transport = InProcessTransport(app, server) if app is not None else None
        speedups = Speedups(transport, iam_enforce)
        _patch_program_parsing(speedups.programs)
        patched = _patch_client_factory(speedups.clients)
        _patch_jsonpath()
        stepfunctions_index.install()
        log.info(
            "Step Functions speedups installed (%d client call sites, Lambda %s)",
            patched,
            "in-process" if transport else "over HTTP",
        )
        _installed = speedups
        return speedups


def installed() -> Speedups | None:
    """The installed speedups, or None when moto's path runs as shipped."""
    return _installed


def _patch_program_parsing(cache: ProgramCache) -> None:
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    def _get_evaluation_entrypoint(self: Any) -> Any:
        return cache.program(self._evaluation_details.state_machine_details.definition)

    ExecutionWorker._get_evaluation_entrypoint = _get_evaluation_entrypoint  # type: ignore[method-assign]


def _patch_client_factory(cache: ClientCache) -> int:
    # The parser imports every state's module; each holds its own `boto_client_for` name.
    import moto.stepfunctions.parser.asl.parse.preprocessor  # noqa: F401
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = boto_client.boto_client_for
    patched = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("moto.stepfunctions.parser") or module is None:
            continue
        if getattr(module, "boto_client_for", None) is original:
            module.boto_client_for = cache.client_for  # type: ignore[attr-defined]
            patched += 1
    # Modules imported later with `from ... import boto_client_for` get the cached one too.
    boto_client.boto_client_for = cache.client_for  # type: ignore[assignment]
    return patched


@functools.lru_cache(maxsize=4096)
def _compile_jsonpath(path: str) -> Any:
    from jsonpath_ng import parse

    return parse(path)


@functools.lru_cache(maxsize=4096)
def _compile_jsonpath_ext(path: str) -> Any:
    from jsonpath_ng.ext import parse

    return parse(path)


def _patch_jsonpath() -> None:
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    json_path.parse = _compile_jsonpath_ext  # type: ignore[assignment]
    result_path.parse = _compile_jsonpath  # type: ignore[assignment]
