"""endpoint_router: model archives, model-server processes and the InvokeEndpoint proxy.

A variant of an endpoint is one `services.model_server` process on a free local port, serving
the model unpacked (safely: archives are untrusted) under `<state>/models/<model>/`.
Invocations are proxied over pooled keep-alive connections; the container's errors become
`ModelError`. The pool is a few lines of HTTP/1.1 on asyncio streams: the proxy is the hot path,
and a general-purpose client costs more than the model's forward pass on a small CNN.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from . import processes
from .capture import CaptureWriter, capture_record
from .exceptions import ModelError, RuntimeValidationError, ServiceUnavailable
from .s3io import download_prefix, split_s3_uri

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_MARKER = ".sagemaker-local-source.json"
MAX_MODEL_BYTES = int(os.environ.get("SAGEMAKER_LOCAL_MAX_MODEL_BYTES", str(8 << 30)))
MAX_MODEL_MEMBERS = 100_000
LOG_TAIL_BYTES = 4096


class ModelArchiveError(Exception):
    """A model archive that cannot be used (corrupt, unsafe, too large, missing)."""


def _normalised(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def _inside(relative: str) -> bool:
    norm = _normalised(relative)
    return not (norm == ".." or norm.startswith("../") or norm.startswith("/"))


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a tar member that could write outside the target or is not a plain entry."""
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute() or os.path.isabs(name):
        raise ModelArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise ModelArchiveError(f"archive member {name!r} has a '..' component")
    if member.issym():
        link = member.linkname
        if link.startswith("/") or not _inside(str(PurePosixPath(name).parent / link)):
            raise ModelArchiveError(f"archive link {name!r} points outside the model ({link!r})")
    elif member.islnk():
        link = member.linkname
        if link.startswith("/") or not _inside(link):
            raise ModelArchiveError(f"archive link {name!r} points outside the model ({link!r})")
    elif not (member.isfile() or member.isdir()):
        raise ModelArchiveError(f"archive member {name!r} is a device or special file")


def safe_extract(
    archive: Path,
    target: Path,
    max_bytes: int = MAX_MODEL_BYTES,
    max_members: int = MAX_MODEL_MEMBERS,
) -> None:
    """Extract a (gzipped) tar into target, refusing anything unsafe before writing a byte."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            total = 0
            for member in tar:
                check_member(member)
                total += member.size if member.isfile() else 0
                if total > max_bytes:
                    raise ModelArchiveError(f"archive unpacks to more than {max_bytes} bytes")
                members.append(member)
                if len(members) > max_members:
                    raise ModelArchiveError(f"archive has more than {max_members} members")
            # The stdlib "data" filter re-checks every path against the disk as it extracts.
            tar.extractall(target, members=members, filter="data")
    except ModelArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise ModelArchiveError(f"not a valid tar.gz archive ({exc})") from exc


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_source(container: dict[str, Any]) -> tuple[str, str, bool]:
    """(S3 URI, kind "archive"|"prefix", compressed) of a container's model data."""
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"], "archive", True
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source:
        compressed = source.get("CompressionType", "None") == "Gzip"
        kind = "archive" if source.get("S3DataType") == "S3Object" else "prefix"
        return source["S3Uri"], kind, compressed
    return "", "none", False


def prepare_model(s3: Any, container: dict[str, Any], target: Path) -> Path:
    """Download and unpack a container's model data into target, reusing an identical copy."""
    uri, kind, compressed = model_source(container)
    marker = target / SOURCE_MARKER
    if not uri:
        target.mkdir(parents=True, exist_ok=True)
        return target
    try:
        bucket, key = split_s3_uri(uri)
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"] if kind == "archive" else None
    except Exception as exc:  # any S3 failure is the model's failure reason
        raise ModelArchiveError(f'Could not access model data at "{uri}": {exc}') from exc
    source = {"uri": uri, "etag": etag}
    if etag and marker.exists():
        try:
            if json.loads(marker.read_text()) == source:
                return target
        except ValueError:
            pass
    staging = target.with_name(f".{target.name}.{os.getpid()}.{time.time_ns()}")
    try:
        staging.mkdir(parents=True)
        if kind == "archive":
            archive = staging.with_suffix(".download")
            s3.download_file(bucket, key, str(archive))
            try:
                if compressed or tarfile.is_tarfile(archive):
                    safe_extract(archive, staging)
                else:
                    shutil.copy(archive, staging / PurePosixPath(key).name)
            finally:
                archive.unlink(missing_ok=True)
        else:
            download_prefix(s3, uri, staging, max_bytes=MAX_MODEL_BYTES)
        (staging / SOURCE_MARKER).write_text(json.dumps(source))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except ModelArchiveError as exc:
        raise ModelArchiveError(
            f'Failed to extract model data archive from URL "{uri}". '
            f"Please ensure that the object located at the URL is a valid tar.gz archive: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelArchiveError(f'Failed to download model data from URL "{uri}": {exc}') from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def serve_command() -> list[str]:
    """The serving command; `SAGEMAKER_LOCAL_SERVE_COMMAND` swaps in another server."""
    custom = os.environ.get("SAGEMAKER_LOCAL_SERVE_COMMAND", "").strip()
    return shlex.split(custom) if custom else [sys.executable, "-m", "services.model_server"]


# SageMaker's serving-container variables that our model server takes as options.
ENV_OPTIONS = {
    "SAGEMAKER_MODEL_SERVER_WORKERS": "--workers",
    "SAGEMAKER_TS_BATCH_SIZE": "--max-batch-size",
    "SAGEMAKER_TS_MAX_BATCH_DELAY": "--max-batch-delay-ms",
}


class ModelServerFailed(Exception):
    """A model server that exited or never answered /ping."""


class ModelServer:
    """One model-server process serving one production variant."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.environment = dict(environment or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while started."""
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the server process on a free port."""
        self.port = free_port()
        command = [
            *serve_command(),
            "--model-dir",
            str(self.model_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        for var, option in ENV_OPTIONS.items():
            if self.environment.get(var):
                command += [option, str(self.environment[var])]
        env = {**os.environ, **self.environment, "SAGEMAKER_BIND_TO_PORT": str(self.port)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = processes.launch(
                command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
            )
        log.info("model server pid %s on port %s for %s", self.pid, self.port, self.model_dir)

    def log_tail(self) -> str:
        """The last lines the server wrote (its failure reason when it exits)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-5:])

    def wait_ready(self, timeout_s: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Poll /ping until 200; raise ModelServerFailed if the process exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        port_retries = 2
        while True:
            if self.proc.poll() is not None:
                if port_retries and "address already in use" in self.log_tail().lower():
                    # The free port was taken between choosing it and binding it: choose again.
                    port_retries -= 1
                    self.start()
                    continue
                raise ModelServerFailed(
                    f"model server exited with code {self.proc.returncode}: {self.log_tail()}"
                )
            if cancelled():
                raise ModelServerFailed("deployment cancelled")
            if self._ping():
                return
            if time.monotonic() > deadline:
                raise ModelServerFailed(f"/ping did not answer 200 within {timeout_s:.0f} s")
            time.sleep(0.05)

    def _ping(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server and its workers."""
        if self.proc is not None:
            processes.stop(self.proc)


@dataclass
class VariantRoute:
    """Where one production variant's traffic goes."""

    name: str
    weight: float
    server: ModelServer
    image: str = ""


@dataclass
class Route:
    """A live endpoint: its variants and its capture_writer."""

    endpoint_name: str
    variants: list[VariantRoute]
    capture: CaptureWriter | None = None
    servers: list[ModelServer] = field(default_factory=list)

    def pick(self, target_variant: str | None) -> VariantRoute:
        """The variant for one request: the target if named, else weighted at random."""
        if target_variant:
            for v in self.variants:
                if v.name == target_variant:
                    return v
            raise RuntimeValidationError(
                f"Variant {target_variant} not found for endpoint {self.endpoint_name}."
            )
        if len(self.variants) == 1:
            return self.variants[0]
        weights = [max(v.weight, 0.0) for v in self.variants]
        if sum(weights) <= 0:
            weights = [1.0] * len(self.variants)
        return random.choices(self.variants, weights=weights)[0]


@dataclass
class Invocation:
    """A successful InvokeEndpoint answer."""

    body: bytes
    content_type: str
    variant: str
    custom_attributes: str | None = None


class _StaleConnection(Exception):
    """A kept-alive connection the server closed before answering: safe to retry once."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to the local model servers."""

    def __init__(self, max_idle_per_server: int = 256) -> None:
        self.max_idle_per_server = max_idle_per_server
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(
        self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """POST and read the whole answer: (status, lower-cased headers, body)."""
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        request = head.encode("latin-1")
        for attempt in range(2):
            conn, reused = await self._acquire(host, port)
            try:
                conn.writer.write(request + body if len(body) < 65536 else request)
                if len(body) >= 65536:
                    conn.writer.write(body)
                status, answer_headers, answer, keep_alive = await _read_response(conn.reader)
            except (_StaleConnection, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise ConnectionError(f"the model server closed the connection ({exc})") from exc
            except BaseException:
                conn.close()  # cancelled or failed mid-answer: the connection is unusable
                raise
            if keep_alive:
                self._release(host, port, conn)
            else:
                conn.close()
            return status, answer_headers, answer
        raise ConnectionError("unreachable")

    async def _acquire(self, host: str, port: int) -> tuple[_Connection, bool]:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(host, port)
        return _Connection(reader, writer), False

    def _release(self, host: str, port: int, conn: _Connection) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) < self.max_idle_per_server:
            idle.append(conn)
        else:
            conn.close()

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to a server that stops."""
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        for key in list(self._idle):
            self.forget(*key)


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise _StaleConnection("closed before the status line")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ConnectionError(f"malformed status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == b"HTTP/1.1"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        keep_alive = False
    return status, headers, body, keep_alive


class EndpointRouter:
    """endpoint_router: routes InvokeEndpoint to model servers and captures the traffic."""

    def __init__(self, region: str, account_id: str, invocation_timeout_s: float = 60.0) -> None:
        self.region = region
        self.account_id = account_id
        self.invocation_timeout_s = invocation_timeout_s
        self._routes: dict[str, Route] = {}
        self._pending: set[str] = set()
        self._pool: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    async def start(self) -> None:
        """Open the connection pool (inside the serving event loop)."""
        self._pool = ConnectionPool()
        self._loop = asyncio.get_running_loop()

    def forget_server(self, port: int) -> None:
        """Drop pooled connections to a stopped server (callable from any thread)."""
        if self._pool is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._pool.forget, "127.0.0.1", port)

    async def close(self) -> None:
        """Close the pooled connections."""
        self.closing = True
        if self._pool is not None:
            self._pool.close()

    def set_route(self, route: Route) -> None:
        """Send an endpoint's traffic to a new set of variants."""
        self._routes[route.endpoint_name] = route
        self._pending.discard(route.endpoint_name)

    def mark_pending(self, endpoint_name: str) -> None:
        """An endpoint that is coming back after a restart: invocations wait for it."""
        self._pending.add(endpoint_name)

    def remove_route(self, endpoint_name: str) -> Route | None:
        """Stop routing to an endpoint."""
        self._pending.discard(endpoint_name)
        return self._routes.pop(endpoint_name, None)

    def route(self, endpoint_name: str) -> Route | None:
        """The live route of an endpoint, if any."""
        return self._routes.get(endpoint_name)

    def _not_found(self, endpoint_name: str) -> RuntimeValidationError:
        return RuntimeValidationError(
            f"Endpoint {endpoint_name} of account {self.account_id} not found."
        )

    def _log_stream_arn(self, endpoint_name: str) -> str:
        return (
            f"arn:aws:logs:{self.region}:{self.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint_name}"
        )

    def _model_error(self, endpoint_name: str, message: str, **members: Any) -> ModelError:
        return ModelError(message, LogStreamArn=self._log_stream_arn(endpoint_name), **members)

    async def _live_route(self, endpoint_name: str) -> Route:
        route = self._routes.get(endpoint_name)
        if route is not None:
            return route
        if endpoint_name not in self._pending:
            raise self._not_found(endpoint_name)
        deadline = time.monotonic() + self.invocation_timeout_s
        while endpoint_name in self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            route = self._routes.get(endpoint_name)
            if route is not None:
                return route
        raise self._not_found(endpoint_name)

    async def invoke(
        self,
        endpoint_name: str,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        target_variant: str | None = None,
    ) -> Invocation:
        """Proxy one invocation to the endpoint's model server; capture it if configured."""
        if self.closing or self._pool is None:
            raise ServiceUnavailable("sagemaker-local is shutting down.")
        inference_time = datetime.now(UTC)
        route = await self._live_route(endpoint_name)
        variant = route.pick(target_variant)
        headers = {"Content-Type": content_type or "application/octet-stream"}
        if accept:
            headers["Accept"] = accept
        if custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
        if inference_id:
            headers["X-Amzn-SageMaker-Inference-Id"] = inference_id
        try:
            async with asyncio.timeout(self.invocation_timeout_s):
                status, answer_headers, answer = await self._pool.post(
                    "127.0.0.1", variant.server.port, "/invocations", body, headers
                )
            answer_type = answer_headers.get("content-type", "application/octet-stream")
            answer_attributes = answer_headers.get("x-amzn-sagemaker-custom-attributes")
        except TimeoutError as exc:
            raise self._model_error(
                endpoint_name,
                f"Your invocation timed out while waiting for a response from container "
                f"{variant.name}. Review the latency metrics for each container in Amazon "
                f"CloudWatch, resolve the issue, and try again.",
            ) from exc
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            raise self._model_error(
                endpoint_name,
                f"An error occurred while sending the request to container {variant.name}: {exc}",
            ) from exc
        if not 200 <= status < 300:
            original = answer.decode(errors="replace")
            side = "client" if 400 <= status < 500 else "server"
            raise self._model_error(
                endpoint_name,
                f'Received {side} error ({status}) from primary with message "{original}". '
                f"See https://{self.region}.console.aws.amazon.com/cloudwatch/home?region="
                f"{self.region}#logEventViewer:group=/aws/sagemaker/Endpoints/{endpoint_name} "
                f"in account {self.account_id} for more information.",
                OriginalStatusCode=status,
                OriginalMessage=original,
            )
        capture = route.capture
        if capture is not None and capture.sampled():
            record = capture_record(
                capture.settings,
                input_content_type=content_type or "application/octet-stream",
                input_data=body,
                output_content_type=answer_type,
                output_data=answer,
                inference_time=inference_time,
                inference_id=inference_id,
            )
            capture.add(variant.name, record, inference_time)
        return Invocation(answer, answer_type, variant.name, answer_attributes)
