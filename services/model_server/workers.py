"""Worker processes: each loads the model once and answers batches sent by the front end.

The front end talks to a worker over a socket pair with length-prefixed pickle frames (a private
channel between the server's own processes). A worker runs input_fn, predict_fn and output_fn,
so decoding and encoding stay off the front end's event loop. A worker that dies, or overruns the
request timeout, fails its current batch (500 / 504) and is replaced.

Started by the pool only, with `worker_main` as the entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batching import BatchQueue, InvocationResult, PendingInvocation
from .image_budget import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageBudget
from .metrics import ServerMetrics

log = logging.getLogger("model_server.workers")

_HEADER = struct.Struct("!I")
# glibc's allocator in a worker (a setting in the server's environment wins). Every thread that
# allocates gets its own arena (64 MB of address space each); two are plenty for a process that
# runs one batch at a time. A batch's activations (~1 MB a layer for 8 CIFAR images) are above
# glibc's mmap threshold, and freed memory above the trim threshold goes back to the kernel: each
# batch then faults in and zeroes fresh pages (measured: a quarter of the worker's CPU in the
# kernel, mostly page faults). Kept in the heap, a batch took ~20 % less CPU for a few MB more
# resident memory with the project's CNN (up to the trim threshold after very large inputs).
WORKER_MALLOC = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
}
_START_RETRIES = 3
_WORKER_ENTRY = (
    f"import sys; from {__package__}.workers import worker_main; sys.exit(worker_main())"
)
# The folder holding `services/`: put on the worker's PYTHONPATH so it imports this package.
_PACKAGE_ROOT = Path(__file__).resolve().parents[len(__package__.split("."))]


class WorkerFailed(Exception):
    """A worker could not load the model, or died; the message says why."""


class WorkerTimedOut(WorkerFailed):
    """A worker overran the request timeout (and was killed)."""


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker process is started with."""

    model_dir: Path
    threads: int
    request_timeout_s: float
    image_budget: ImageBudget = field(default_factory=ImageBudget)


# --- the front end's side -------------------------------------------------------------------


class WorkerProcess:
    """One worker process and the socket to it, as the front end sees them."""

    def __init__(self, index: int, settings: WorkerSettings) -> None:
        self.index = index
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self._channel: WorkerChannel | None = None

    @property
    def pid(self) -> int | None:
        """The process id, once started."""
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        """Started, and neither its process nor its socket has gone away."""
        return (
            self.process is not None
            and self.process.returncode is None
            and self._channel is not None
            and not self._channel.closed
        )

    async def start(self) -> None:
        """Spawn the process and wait until its model is loaded; WorkerFailed if it is not."""
        self.ready = False
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        threads = str(self.settings.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.update({name: value for name, value in WORKER_MALLOC.items() if name not in env})
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER_ENTRY,
                "--fd",
                str(child_sock.fileno()),
                "--model-dir",
                str(self.settings.model_dir),
                "--threads",
                threads,
                "--parent-pid",
                str(os.getpid()),
                "--max-image-pixels",
                str(self.settings.image_budget.max_pixels),
                "--max-image-bytes",
                str(self.settings.image_budget.max_bytes),
                pass_fds=(child_sock.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        loop = asyncio.get_running_loop()
        _, self._channel = await loop.connect_accepted_socket(WorkerChannel, parent_sock)
        try:
            message = await self._channel.receive()
        except ConnectionError:
            code = await self.process.wait()
            raise WorkerFailed(
                f"worker {self.index} exited with code {code} before loading the model"
            ) from None
        if message[0] != "ready":
            await self.process.wait()
            raise WorkerFailed(message[1])
        self.ready = True

    async def run_batch(self, batch: list[PendingInvocation]) -> list[InvocationResult]:
        """Send a batch and wait for its answers; WorkerFailed if the worker dies or hangs."""
        assert self._channel is not None
        frame = [(item.body, item.content_type, item.accept) for item in batch]
        try:
            self._channel.send(("batch", frame))
            async with asyncio.timeout(self.settings.request_timeout_s):
                message = await self._channel.receive()
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut(
                f"the model did not answer within {self.settings.request_timeout_s:g} s"
            ) from None
        except ConnectionError:
            code = await self.process.wait() if self.process else None
            raise WorkerFailed(f"worker process exited unexpectedly (exit code {code})") from None
        return [InvocationResult(status, body, ctype) for status, body, ctype in message[1]]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit after its current batch; kill it if it does not."""
        if self.process is None:
            return
        if not self.ready:  # still loading the model: nothing to finish
            self.kill()
        elif self._channel is not None:
            self._channel.send(("stop",))
            self._channel.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
        except TimeoutError:
            self.kill()
            await self.process.wait()

    def kill(self) -> None:
        """Kill the process at once."""
        self.ready = False
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class WorkerChannel(asyncio.Protocol):
    """The front end's end of a worker's socket: length-prefixed pickle frames, both ways."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._messages: deque[Any] = deque()
        self._waiter: asyncio.Future[Any] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                return
            message = pickle.loads(bytes(buffer[_HEADER.size : end]))
            del buffer[:end]
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(message)
            else:
                self._messages.append(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("worker channel closed"))

    def send(self, message: Any) -> None:
        """Queue one frame for the worker (dropped once the channel is closed)."""
        if self.transport is None or self.transport.is_closing():
            return
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.writelines((_HEADER.pack(len(payload)), payload))

    async def receive(self) -> Any:
        """The next frame from the worker; ConnectionError once it has gone."""
        if self._messages:
            return self._messages.popleft()
        if self.closed:
            raise ConnectionError("worker channel closed")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Close the socket (the worker sees end-of-file)."""
        if self.transport is not None:
            self.transport.close()


class WorkerPool:
    """N worker processes, each taking batches from the shared queue."""

    def __init__(
        self,
        count: int,
        settings: WorkerSettings,
        queue: BatchQueue,
        metrics: ServerMetrics,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.workers = [WorkerProcess(i, settings) for i in range(count)]
        self.ready = False
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every worker; once all have the model loaded, start taking batches."""
        starts = [asyncio.create_task(worker.start()) for worker in self.workers]
        try:
            done, _ = await asyncio.wait(starts, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # on the first failure, or when cancelled: no worker is left loading
            for start in starts:
                start.cancel()
            await asyncio.gather(*starts, return_exceptions=True)
        failures = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if failures:
            await asyncio.gather(*(w.stop(timeout_s=5) for w in self.workers))
            failure = failures[0]
            if isinstance(failure, WorkerFailed):
                raise failure
            raise WorkerFailed(f"{type(failure).__name__}: {failure}")
        self.metrics.workers_ready = len(self.workers)
        self.ready = True
        self._loops = [asyncio.create_task(self._serve(worker)) for worker in self.workers]
        log.info("%d worker(s) ready: pids %s", len(self.workers), [w.pid for w in self.workers])

    @property
    def serving(self) -> bool:
        """At least one worker has the model loaded and is alive right now."""
        return self.ready and any(w.ready and w.alive for w in self.workers)

    async def stop(self) -> None:
        """Stop taking batches and stop every worker process."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        self.metrics.workers_ready = 0

    async def _serve(self, worker: WorkerProcess) -> None:
        while True:
            batch = await self.queue.next_batch()
            if not worker.alive:  # it died while idle: not this batch's fault
                self.queue.requeue(batch)
                await self._replace(worker)
                continue
            self.metrics.queue_depth = len(self.queue)
            self.metrics.batch_size.observe(len(batch))
            started = time.monotonic()
            failed = False
            try:
                results = await worker.run_batch(batch)
            except WorkerFailed as exc:
                failed = True
                # A hung model is the model's fault (504); a crash is not the request's: 503 says
                # "try again", and the replacement worker will take the retry.
                timed_out = isinstance(exc, WorkerTimedOut)
                status = 504 if timed_out else 503
                log.error("worker %d (pid %s): %s", worker.index, worker.pid, exc)
                self.metrics.record_error("timeout" if timed_out else "worker_died")
                kind = "WorkerTimedOut" if timed_out else "WorkerDied"
                results = [_error_result(status, kind, str(exc))] * len(batch)
            self.metrics.batch_latency.observe(time.monotonic() - started)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
            if failed:  # answered first: the restart takes as long as loading the model
                await self._replace(worker)

    async def _replace(self, worker: WorkerProcess) -> None:
        """Restart a dead worker; after repeated failures the whole server gives up."""
        self.metrics.workers_ready -= 1
        worker.kill()
        if worker.process is not None:
            await worker.process.wait()
        for attempt in range(1, _START_RETRIES + 1):
            try:
                await worker.start()
            except WorkerFailed as exc:
                log.error("restarting worker %d failed (try %d): %s", worker.index, attempt, exc)
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            self.metrics.worker_restarts += 1
            self.metrics.workers_ready += 1
            log.warning("worker %d restarted as pid %s", worker.index, worker.pid)
            return
        self.on_fatal(f"worker {worker.index} could not be restarted")


def _error_result(status: int, kind: str, message: str) -> InvocationResult:
    body = json.dumps({"code": status, "type": kind, "message": message}).encode()
    return InvocationResult(status, body, "application/json")


# --- the worker process's side --------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = sock.recv_into(view[received:])
        if n == 0:
            return None
        received += n
    return bytes(buffer)


def _send(sock: socket.socket, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    header = _HEADER.pack(len(payload))
    if len(payload) < 65536:
        sock.sendall(header + payload)
    else:
        sock.sendall(header)
        sock.sendall(payload)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the front end dies, so no worker is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _settle_heap() -> None:
    """After loading: hand freed heap back to the OS and take what is loaded out of the GC's way.

    Importing torch leaves ~165,000 tracked long-lived objects: a full collection walking them
    took 74 ms (measured), a stall in some request's latency; frozen, it takes none. malloc_trim
    returns the pages the import and the loading freed (the state dict once copied in).
    """
    gc.collect()
    gc.freeze()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


def worker_main(argv: list[str] | None = None) -> int:
    """Load the model, then answer batches until told to stop or the front end goes away."""
    parser = argparse.ArgumentParser(prog="model_server.workers")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_BYTES)
    args = parser.parse_args(argv)
    # The front end owns shutdown: it finishes in-flight batches, then tells workers to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(args.parent_pid)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s"
    )
    sock = socket.socket(fileno=args.fd)
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        from .handler import InferenceRequest, ModelHandler

        handler = ModelHandler(
            args.model_dir, ImageBudget(args.max_image_pixels, args.max_image_bytes)
        )
        handler.load()
        _settle_heap()
    except BaseException as exc:
        traceback.print_exc()
        reason = f"failed to load the model from {args.model_dir}: {type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            _send(sock, ("failed", reason))
        return 1
    _send(sock, ("ready", os.getpid()))
    while True:
        header = _recv_exact(sock, _HEADER.size)
        if header is None:
            return 0
        payload = _recv_exact(sock, _HEADER.unpack(header)[0])
        if payload is None:
            return 0
        message = pickle.loads(payload)
        if message[0] == "stop":
            return 0
        requests = [InferenceRequest(body, ctype, accept) for body, ctype, accept in message[1]]
        try:
            answers = [(r.status, r.body, r.content_type) for r in handler.handle_batch(requests)]
        except Exception as exc:  # a defect outside the hooks' own error handling
            traceback.print_exc()
            failure = _error_result(500, type(exc).__name__, str(exc))
            answers = [(failure.status, failure.body, failure.content_type)] * len(requests)
        _send(sock, ("result", answers))


if __name__ == "__main__":
    sys.exit(worker_main())
