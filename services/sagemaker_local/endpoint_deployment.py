"""endpoint_deployment: one creation, update, restoration or repair of an endpoint.

A deployment prepares each variant's model data, starts its model server and waits for `/ping`,
on a thread of its own. It knows nothing of the endpoint records: it reports its outcome through
one callback into the state (`Finished`), which decides whether the new route goes live. The
state imports this module, never the other way round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .archive import ModelArchiveError
from .capture import CaptureService, CaptureSettings
from .model_data import prepare_model
from .model_server_process import ModelServerFailed, ModelServerProcess
from .router import Route, VariantRoute

log = logging.getLogger(__name__)


class DeploymentFailed(Exception):
    """An endpoint deployment that cannot go InService; the message is the FailureReason."""


@dataclass
class HostingContext:
    """What every deployment needs from sagemaker-local."""

    state_dir: Path
    s3: Any
    capture: CaptureService
    startup_timeout_s: float
    model_lock: Callable[[str], threading.Lock]


# (deployment, the live route or None, failure reason or None) -> whether the route was taken.
Finished = Callable[["EndpointDeployment", Route | None, str | None], bool]


class EndpointDeployment:
    """One in-flight deployment of an endpoint's variants ("create", "update", "restore")."""

    def __init__(
        self,
        name: str,
        snapshot: dict[str, Any],
        mode: str,
        context: HostingContext,
        finished: Finished,
    ) -> None:
        self.name = name
        self.snapshot = snapshot
        self.mode = mode
        self.context = context
        self.finished = finished
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"deploy-{name}", daemon=True)

    def start(self) -> None:
        """Begin on the deployment's own thread."""
        self.thread.start()

    def cancel(self) -> None:
        """Stop as soon as possible (endpoint deleted, sagemaker-local stopping)."""
        self.cancelled.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the deployment's thread."""
        self.thread.join(timeout)

    def _run(self) -> None:
        servers: list[ModelServerProcess] = []
        writer = None
        started = time.monotonic()
        try:
            variants = self._launch_variants(servers)
            config = self.snapshot["config"]
            settings = CaptureSettings.from_config(config.get("DataCaptureConfig"))
            writer = self.context.capture.writer(self.name, settings) if settings else None
            route = Route(self.name, variants, writer, servers)
            if self.cancelled.is_set() or not self.finished(self, route, None):
                raise DeploymentFailed("deployment cancelled")
            log.info(
                "endpoint %s InService in %.2f s (%s)",
                self.name,
                time.monotonic() - started,
                self.mode,
            )
        except Exception as exc:  # every failure ends the deployment
            if not isinstance(exc, DeploymentFailed):
                log.exception("deployment of %s failed", self.name)
            if writer is not None:
                self.context.capture.retire(writer)
            for server in servers:
                server.stop()
            self.finished(self, None, str(exc))

    def _launch_variants(self, servers: list[ModelServerProcess]) -> list[VariantRoute]:
        context = self.context
        variants = []
        for pv in self.snapshot["config"]["ProductionVariants"]:
            if self.cancelled.is_set():
                raise DeploymentFailed("deployment cancelled")
            model = self.snapshot["models"][pv["ModelName"]]
            container = model.get("PrimaryContainer") or model["Containers"][0]
            model_dir = context.state_dir / "models" / pv["ModelName"]
            try:
                with context.model_lock(pv["ModelName"]):
                    prepare_model(context.s3, container, model_dir)
            except ModelArchiveError as exc:
                raise DeploymentFailed(f"ClientError: {exc}") from exc
            server = ModelServerProcess(
                model_dir,
                variant_log_path(context.state_dir, self.name, pv["VariantName"]),
                container.get("Environment"),
            )
            server.start()
            servers.append(server)
            variants.append(
                VariantRoute(
                    pv["VariantName"],
                    float(pv.get("InitialVariantWeight", 1.0)),
                    server,
                    container.get("Image", ""),
                    startup_timeout_s=float(
                        pv.get("ContainerStartupHealthCheckTimeoutInSeconds")
                        or context.startup_timeout_s
                    ),
                )
            )
        for variant in variants:
            try:
                variant.server.wait_ready(variant.startup_timeout_s, self.cancelled.is_set)
            except ModelServerFailed as exc:
                raise DeploymentFailed(
                    f"The primary container for production variant {variant.name} did not pass "
                    f"the ping health check. Please check CloudWatch logs for this endpoint. "
                    f"({exc})"
                ) from exc
        return variants


def variant_log_path(state_dir: Path, endpoint_name: str, variant_name: str) -> Path:
    """A new log file for a variant's model server (one per start, so restarts keep history)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return state_dir / "endpoints" / endpoint_name / f"{variant_name}-{stamp}.log"
