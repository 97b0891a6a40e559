"""model_server_supervisor: replaces a model server that died, as AWS replaces a failed instance.

Every `interval_s` it looks at the live routes; a variant whose process has exited gets a new
process on a new free port (never the old one: another endpoint may hold it by now), with its
own log file. While it comes up the endpoint is `SystemUpdating` and `/_health` says
`restarting`; invocations of that variant meanwhile get a retryable 503 `ServiceUnavailable`.
Once `/ping` answers, the route points at the new process and the endpoint is InService again.
A replacement that fails is retried with exponential backoff (up to `MAX_BACKOFF_S`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .endpoint_deployment import variant_log_path
from .model_server_process import ModelServerFailed, ModelServerProcess
from .router import EndpointRouter, Route, VariantRoute

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


@dataclass
class _Attempts:
    failures: int = 0
    next_try: float = 0.0


# (route, variant name, restarting?) -> whether that route is still the endpoint's live one.
StatusChange = Callable[[Route, str, bool], bool]


@dataclass
class ModelServerSupervisor:
    """The thread that watches every live model server and replaces the dead ones."""

    router: EndpointRouter
    state_dir: Path
    status_change: StatusChange
    interval_s: float = 0.5
    restarts: int = 0
    _attempts: dict[tuple[str, str], _Attempts] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin watching."""
        self._thread = threading.Thread(target=self._run, name="model-server-supervisor")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the servers are stopped on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def restarting(self, endpoint_name: str, variant_name: str) -> bool:
        """Whether a replacement of this variant's server is under way."""
        return (endpoint_name, variant_name) in self._attempts

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for route in self.router.routes():
                for variant in route.variants:
                    if self._stop.is_set():
                        return
                    if not variant.server.alive():
                        try:
                            self._repair(route, variant)
                        except Exception:  # the supervisor must survive anything
                            log.exception("replacing the model server of %s failed", route)

    def _repair(self, route: Route, variant: VariantRoute) -> None:
        key = (route.endpoint_name, variant.name)
        attempts = self._attempts.setdefault(key, _Attempts())
        if time.monotonic() < attempts.next_try:
            return
        if not self.status_change(route, variant.name, True):
            self._attempts.pop(key, None)  # deleted, updated or shutting down: not ours to fix
            return
        old = variant.server
        log.warning(
            "model server of %s/%s (pid %s, port %s) died with code %s; replacing it",
            route.endpoint_name,
            variant.name,
            old.pid,
            old.port,
            old.proc.returncode if old.proc else None,
        )
        self.router.forget_server(old.port)
        old.stop()  # reap it and whatever is left of its process group
        started = time.monotonic()
        new = ModelServerProcess(
            old.model_dir,
            variant_log_path(self.state_dir, route.endpoint_name, variant.name),
            old.environment,
        )
        try:
            new.start()
            new.wait_ready(variant.startup_timeout_s, self._stop.is_set)
        except (ModelServerFailed, OSError) as exc:
            new.stop()
            attempts.failures += 1
            delay = min(MAX_BACKOFF_S, 0.5 * 2**attempts.failures)
            attempts.next_try = time.monotonic() + delay
            log.error(
                "replacement model server of %s/%s failed (%s); next try in %.1f s",
                route.endpoint_name,
                variant.name,
                exc,
                delay,
            )
            variant.server = new  # dead too: the next round sees it and tries again
            return
        variant.server = new
        if old in route.servers:
            route.servers[route.servers.index(old)] = new
        self._attempts.pop(key, None)
        if not self.status_change(route, variant.name, False):
            new.stop()  # the endpoint was deleted or replaced meanwhile
            return
        self.restarts += 1
        log.warning(
            "model server of %s/%s replaced in %.2f s (pid %s, port %s)",
            route.endpoint_name,
            variant.name,
            time.monotonic() - started,
            new.pid,
            new.port,
        )
