"""SageMaker state: models, endpoint configs and endpoints (training jobs in `training_jobs`).

Plain Python, no HTTP (`responses.py` speaks the wire). Records are kept in the shape of the
Describe* answers (internal fields start with `_`) and persisted by `store.JsonStore`.
Endpoint statuses move as on AWS: Creating -> InService | Failed; Updating -> InService (new
config, or the old one with a FailureReason if the new one fails); Deleting -> gone; after a
restart, or while a dead model server is replaced, InService endpoints pass through
SystemUpdating. Deployments run as `endpoint_deployment.EndpointDeployment` objects and report
back through `_deployment_finished`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from .capture import DEFAULT_FLUSH_BYTES, DEFAULT_FLUSH_INTERVAL_S, CaptureService
from .capture_spool import DEFAULT_MAX_SPOOL_BYTES, SYNC_INTERVAL_S
from .endpoint_deployment import EndpointDeployment, HostingContext
from .exceptions import ResourceLimitExceeded, ValidationException
from .model_registry import ModelRegistry
from .notebooks import NotebookInstances
from .processes import kill_stale_group
from .records import ControlPlaneState, Records, describe_operation, list_operation
from .router import EndpointRouter, Route
from .store import JsonStore
from .supervisor import ModelServerSupervisor
from .training_jobs import TrainingJobs

log = logging.getLogger(__name__)

ACTIVE_ENDPOINT_STATUSES = ("Creating", "Updating", "SystemUpdating", "InService")


@dataclass
class BackendConfig:
    """Knobs of sagemaker-local (see the module's `__main__` for their flags and variables)."""

    state_dir: Path
    account_id: str  # from STS (see `__main__.resolve_account`), never a default
    region: str = "us-east-1"
    startup_timeout_s: float = 600.0
    invocation_timeout_s: float = 60.0
    max_endpoints: int = 16
    max_training_jobs: int = 4
    capture_flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    capture_flush_bytes: int = DEFAULT_FLUSH_BYTES
    capture_spool_max_bytes: int = DEFAULT_MAX_SPOOL_BYTES
    capture_sync_interval_s: float = SYNC_INTERVAL_S
    supervise_interval_s: float = 0.5


class SageMakerBackend:
    """The local SageMaker service: every control-plane operation, the runtime's router."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.store = JsonStore(config.state_dir)
        self.lock = threading.RLock()
        state = ControlPlaneState(config.state_dir, self.store, self.lock, self.arn)
        self.training = TrainingJobs(state, config.max_training_jobs)
        self.registry = ModelRegistry(state, self._model_in_use)
        self.endpoints = Records(
            self.store,
            "endpoints",
            lambda name: ValidationException(
                f'Could not find endpoint "{self.arn("endpoint", name)}".'
            ),
            ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus"),
            status_field="EndpointStatus",
        )
        self.deployments: dict[str, EndpointDeployment] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._background: list[threading.Thread] = []
        self.closing = False
        self.s3 = boto3.client("s3")
        self.capture = CaptureService(
            self.s3,
            config.state_dir / "capture-spool",
            flush_interval_s=config.capture_flush_interval_s,
            flush_bytes=config.capture_flush_bytes,
            max_spool_bytes=config.capture_spool_max_bytes,
            sync_interval_s=config.capture_sync_interval_s,
        )
        self.router = EndpointRouter(
            config.region, config.account_id, invocation_timeout_s=config.invocation_timeout_s
        )
        self.supervisor = ModelServerSupervisor(
            self.router,
            config.state_dir,
            self._server_status,
            interval_s=config.supervise_interval_s,
        )
        self.hosting = HostingContext(
            config.state_dir, self.s3, self.capture, config.startup_timeout_s, self._model_lock
        )
        # The operations of training jobs live in their own room.
        self.create_training_job = self.training.create_training_job
        self.describe_training_job = self.training.describe_training_job
        self.stop_training_job = self.training.stop_training_job
        self.list_training_jobs = self.training.list_training_jobs
        for method_name, operation in self.registry.operations().items():
            setattr(self, method_name, operation)
        # Notebook instances (SDK v2's get_execution_role on a notebook): their own room too.
        self.notebooks = NotebookInstances(self.store, self.lock, self.arn, config.region)
        for method_name, handler in self.notebooks.operations().items():
            setattr(self, method_name, handler)

    # -- helpers -----------------------------------------------------------------------------
    def arn(self, kind: str, name: str) -> str:
        """`arn:aws:sagemaker:<region>:<account>:<kind>/<name-lowercased>`."""
        return (
            f"arn:aws:sagemaker:{self.config.region}:{self.config.account_id}:{kind}/{name.lower()}"
        )

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._background = [t for t in self._background if t.is_alive()]
        self._background.append(thread)
        thread.start()
        return thread

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the persisted state; end interrupted jobs; bring endpoints back up."""
        self.training.load()
        self.registry.load()
        with self.lock:
            self.endpoints.load()
            for endpoint in list(self.endpoints.values()):
                self._recover_endpoint(endpoint)
        self.supervisor.start()

    def _recover_endpoint(self, endpoint: dict[str, Any]) -> None:
        for server in endpoint.pop("_servers", []):
            if server.get("pid"):
                kill_stale_group(int(server["pid"]), str(self.state_dir / "models"))
        status = endpoint["EndpointStatus"]
        name = endpoint["_name"]
        if status == "Deleting":
            self.endpoints.remove(name)
            return
        if status not in ACTIVE_ENDPOINT_STATUSES or not endpoint.get("_deployed"):
            self.endpoints.save(endpoint)
            return
        if status == "Creating":
            mode = "create"
        else:
            mode = "restore"
            endpoint["EndpointStatus"] = "SystemUpdating"
            endpoint.pop("PendingDeploymentSummary", None)
            if endpoint.get("_previousConfig"):  # an update was cut short: back to what served
                endpoint["EndpointConfigName"] = endpoint["_previousConfig"]
            self.router.mark_pending(name)
        endpoint.pop("_previousConfig", None)
        self.endpoints.save(endpoint)
        self._start_deployment(name, endpoint["_deployed"], mode)

    def shutdown(self) -> None:
        """Stop everything this process started; flush capture; keep endpoints for a restart."""
        with self.lock:
            self.closing = True
            deployments = list(self.deployments.values())
        self.supervisor.stop()  # from here on, servers stop on purpose
        for deployment in deployments:
            deployment.cancel()
        self.training.interrupt_all()
        for deployment in deployments:
            deployment.join(timeout=30)
        for name in list(self.endpoints):
            route = self.router.remove_route(name)
            if route is not None:
                self._retire_route(route)
        for thread in list(self._background):
            thread.join(timeout=30)
        self.capture.close()
        with self.lock:
            for endpoint in self.endpoints.values():
                endpoint.pop("_servers", None)
                self.endpoints.save(endpoint)

    def _model_in_use(self, model_name: str) -> bool:
        with self.lock:
            return any(
                model_name in (e.get("_deployed") or {}).get("models", {})
                for e in self.endpoints.values()
            )

    def _retire_route(self, route: Route) -> None:
        if route.capture is not None:
            self.capture.retire(route.capture)
        for server in route.servers:
            server.stop()
            self.router.forget_server(server.port)

    def health(self) -> dict[str, Any]:
        """What `GET /_health` reports: endpoints with their servers, training jobs."""
        with self.lock:
            endpoints = {}
            for name, record in self.endpoints.items():
                route = self.router.route(name)
                variants = {}
                if route is not None:
                    variants = {
                        v.name: {
                            "pid": v.server.pid,
                            "port": v.server.port,
                            "alive": v.server.alive(),
                            "restarting": self.supervisor.restarting(name, v.name),
                        }
                        for v in route.variants
                    }
                endpoints[name] = {"status": record["EndpointStatus"], "variants": variants}
            restarts = self.supervisor.restarts
            jobs = {
                name: {"status": job["TrainingJobStatus"], "pid": job.get("_pid")}
                for name, job in self.training.training_jobs.items()
            }
        return {
            "status": "ok",
            "service": "sagemaker-local",
            "endpoints": endpoints,
            "modelServerRestarts": restarts,
            "capture": self.capture.status(),
            "trainingJobs": jobs,
        }

    # -- endpoints -----------------------------------------------------------------------------
    def _snapshot(self, config_name: str) -> dict[str, Any]:
        """The config and its models as deployed: an endpoint outlives their deletion."""
        config = self.registry.endpoint_configs.find(config_name)
        models = {}
        for variant in config["ProductionVariants"]:
            models[variant["ModelName"]] = self.registry.models.describe(variant["ModelName"])
        return {"config": copy.deepcopy(config), "models": models}

    def create_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateEndpoint: Creating now; InService once every variant's server answers /ping."""
        name = params["EndpointName"]
        arn = self.arn("endpoint", name)
        with self.lock:
            if name in self.endpoints:
                raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
            active = sum(
                1
                for e in self.endpoints.values()
                if e["EndpointStatus"] in ACTIVE_ENDPOINT_STATUSES
            )
            if active >= self.config.max_endpoints:
                raise ResourceLimitExceeded(
                    f"The account-level service limit 'Number of endpoints' is "
                    f"{self.config.max_endpoints} Endpoints, with current utilization of {active}."
                )
            snapshot = self._snapshot(params["EndpointConfigName"])
            now = time.time()
            record = {
                "_name": name,
                "_tags": params.get("Tags", []),
                "_deployed": snapshot,
                "EndpointName": name,
                "EndpointArn": arn,
                "EndpointConfigName": params["EndpointConfigName"],
                "EndpointStatus": "Creating",
                "CreationTime": now,
                "LastModifiedTime": now,
            }
            self.endpoints.add(record)
            self._start_deployment(name, snapshot, "create")
        return {"EndpointArn": arn}

    def update_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """UpdateEndpoint: Updating; the new servers take traffic once up, then the old stop."""
        name = params["EndpointName"]
        with self.lock:
            endpoint = self.endpoints.find(name)
            if endpoint["EndpointStatus"] != "InService":
                raise ValidationException(
                    f'Cannot update in-progress endpoint "{endpoint["EndpointArn"]}".'
                )
            snapshot = self._snapshot(params["EndpointConfigName"])
            now = time.time()
            endpoint.update(
                EndpointStatus="Updating",
                LastModifiedTime=now,
                PendingDeploymentSummary={
                    "EndpointConfigName": params["EndpointConfigName"],
                    "StartTime": now,
                },
                _previousConfig=endpoint["EndpointConfigName"],
                _pending=snapshot,
            )
            endpoint.pop("FailureReason", None)
            self.endpoints.save(endpoint)
            self._start_deployment(name, snapshot, "update")
            return {"EndpointArn": endpoint["EndpointArn"]}

    describe_endpoint = describe_operation("endpoints", "EndpointName")

    def delete_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteEndpoint: Deleting while its servers stop and its capture is flushed."""
        name = params["EndpointName"]
        with self.lock:
            endpoint = self.endpoints.find(name)
            if endpoint["EndpointStatus"] == "Deleting":
                return {}
            endpoint.update(EndpointStatus="Deleting", LastModifiedTime=time.time())
            self.endpoints.save(endpoint)
            deployment = self.deployments.get(name)
            if deployment is not None:
                deployment.cancel()
            route = self.router.remove_route(name)

        def finish() -> None:
            if deployment is not None:
                deployment.join()
            if route is not None:
                self._retire_route(route)
            with self.lock:
                if self.endpoints.get(name) is endpoint:
                    self.endpoints.remove(name)

        self._spawn(finish, f"delete-{name}")
        return {}

    list_endpoints = list_operation("endpoints", "Endpoints")

    # -- deployments ---------------------------------------------------------------------------
    def _start_deployment(self, name: str, snapshot: dict[str, Any], mode: str) -> None:
        deployment = EndpointDeployment(
            name, snapshot, mode, self.hosting, self._deployment_finished
        )
        self.deployments[name] = deployment
        deployment.start()

    def _model_lock(self, model_name: str) -> threading.Lock:
        with self.lock:
            return self._model_locks.setdefault(model_name, threading.Lock())

    def _deployment_finished(
        self, deployment: EndpointDeployment, route: Route | None, reason: str | None
    ) -> bool:
        """The callback of every deployment: take its route live, or record its failure."""
        name = deployment.name
        old = None
        with self.lock:
            if route is None:
                self._deployment_failed(name, deployment, reason or "deployment failed")
                if self.deployments.get(name) is deployment:
                    del self.deployments[name]
                return False
            endpoint = self.endpoints.get(name)
            if deployment.cancelled.is_set() or endpoint is None or self.closing:
                return False
            old = self.router.route(name)
            self.router.set_route(route)
            self._mark_in_service(endpoint, deployment.snapshot, route)
            if self.deployments.get(name) is deployment:
                del self.deployments[name]
        if old is not None and old is not route:
            self._retire_route(old)
        return True

    def _server_status(self, route: Route, variant_name: str, restarting: bool) -> bool:
        """The supervisor's callback: SystemUpdating while a dead server is replaced."""
        name = route.endpoint_name
        with self.lock:
            endpoint = self.endpoints.get(name)
            live = (
                not self.closing
                and endpoint is not None
                and self.router.route(name) is route
                and name not in self.deployments
                and endpoint["EndpointStatus"] in ("InService", "SystemUpdating")
            )
            if not live or endpoint is None:
                return False
            if restarting:
                endpoint["EndpointStatus"] = "SystemUpdating"
            elif not any(self.supervisor.restarting(name, v.name) for v in route.variants):
                endpoint["EndpointStatus"] = "InService"
            endpoint["_servers"] = [
                {"variant": v.name, "pid": v.server.pid, "port": v.server.port}
                for v in route.variants
            ]
            endpoint["LastModifiedTime"] = time.time()
            self.endpoints.save(endpoint)
        log.warning(
            "endpoint %s %s (variant %s)",
            name,
            "SystemUpdating: replacing a dead model server" if restarting else "InService again",
            variant_name,
        )
        return True

    def _mark_in_service(
        self, endpoint: dict[str, Any], snapshot: dict[str, Any], route: Route
    ) -> None:
        now = time.time()
        config = snapshot["config"]
        summaries = []
        for pv, variant in zip(config["ProductionVariants"], route.variants, strict=True):
            summaries.append(
                {
                    "VariantName": pv["VariantName"],
                    "DeployedImages": [
                        {
                            "SpecifiedImage": variant.image,
                            "ResolvedImage": variant.image,
                            "ResolutionTime": now,
                        }
                    ]
                    if variant.image
                    else [],
                    "CurrentWeight": variant.weight,
                    "DesiredWeight": variant.weight,
                    "CurrentInstanceCount": pv.get("InitialInstanceCount", 1),
                    "DesiredInstanceCount": pv.get("InitialInstanceCount", 1),
                }
            )
        capture = config.get("DataCaptureConfig")
        endpoint.update(
            EndpointStatus="InService",
            EndpointConfigName=config["EndpointConfigName"],
            ProductionVariants=summaries,
            LastModifiedTime=now,
            _deployed=snapshot,
            _servers=[
                {"variant": v.name, "pid": v.server.pid, "port": v.server.port}
                for v in route.variants
            ],
        )
        if capture:
            endpoint["DataCaptureConfig"] = {
                "EnableCapture": bool(capture.get("EnableCapture", True)),
                "CaptureStatus": "Started" if capture.get("EnableCapture", True) else "Stopped",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage", 0),
                "DestinationS3Uri": capture["DestinationS3Uri"],
                "KmsKeyId": capture.get("KmsKeyId", ""),
            }
        else:
            endpoint.pop("DataCaptureConfig", None)
        for key in ("PendingDeploymentSummary", "_pending", "_previousConfig", "FailureReason"):
            endpoint.pop(key, None)
        self.endpoints.save(endpoint)

    def _deployment_failed(self, name: str, deployment: EndpointDeployment, reason: str) -> None:
        with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None or deployment.cancelled.is_set() or self.closing:
                return
            now = time.time()
            if deployment.mode == "update":
                # As on AWS: a failed update leaves the endpoint serving its previous config.
                endpoint.update(
                    EndpointStatus="InService",
                    EndpointConfigName=endpoint.get(
                        "_previousConfig", endpoint["EndpointConfigName"]
                    ),
                    FailureReason=reason[:1024],
                    LastModifiedTime=now,
                )
                for key in ("PendingDeploymentSummary", "_pending", "_previousConfig"):
                    endpoint.pop(key, None)
            else:
                endpoint.update(
                    EndpointStatus="Failed", FailureReason=reason[:1024], LastModifiedTime=now
                )
                self.router.remove_route(name)
            self.endpoints.save(endpoint)
        log.warning("endpoint %s deployment (%s) failed: %s", name, deployment.mode, reason)
