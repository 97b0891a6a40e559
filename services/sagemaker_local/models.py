"""SageMaker state and behaviour: training jobs, models, endpoint configs, endpoints.

Plain Python, no HTTP (`responses.py` speaks the wire). Records are kept in the shape of the
Describe* answers (internal fields start with `_`) and persisted by `store.JsonStore`.
Statuses move as on AWS:
- training job: InProgress (Starting, Downloading, Training, Uploading) -> Completed | Failed,
  or Stopping -> Stopped (StopTrainingJob, MaxRuntimeExceeded);
- endpoint: Creating -> InService | Failed; Updating -> InService (new config, or the old one
  with a FailureReason if the new one fails); Deleting -> gone; after a restart InService
  endpoints pass through SystemUpdating while their model servers come back.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from .capture import DEFAULT_FLUSH_BYTES, DEFAULT_FLUSH_INTERVAL_S, CaptureService, CaptureSettings
from .exceptions import (
    ResourceInUse,
    ResourceLimitExceeded,
    ResourceNotFound,
    ValidationException,
)
from .hosting import (
    EndpointRouter,
    ModelArchiveError,
    ModelServer,
    ModelServerFailed,
    Route,
    VariantRoute,
    prepare_model,
)
from .processes import kill_stale_group
from .store import JsonStore
from .training import TrainingJobRunner

log = logging.getLogger(__name__)

DEFAULT_MAX_RESULTS = 10
ACTIVE_ENDPOINT_STATUSES = ("Creating", "Updating", "SystemUpdating", "InService")


@dataclass
class BackendConfig:
    """Knobs of sagemaker-local (see the module's `__main__` for their flags and variables)."""

    state_dir: Path
    region: str = "us-east-1"
    account_id: str = "123456789012"
    startup_timeout_s: float = 600.0
    invocation_timeout_s: float = 60.0
    max_endpoints: int = 16
    max_training_jobs: int = 4
    capture_flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    capture_flush_bytes: int = DEFAULT_FLUSH_BYTES


class DeploymentFailed(Exception):
    """An endpoint deployment that cannot go InService; the message is the FailureReason."""


class Deployment:
    """One in-flight creation, update or restoration of an endpoint."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cancelled = threading.Event()
        self.thread: threading.Thread | None = None


def _page(
    items: list[dict[str, Any]],
    params: dict[str, Any],
    sort_keys: dict[str, str],
    default_sort: str = "CreationTime",
) -> tuple[list[dict[str, Any]], str | None]:
    """Sort, cut one page and give the NextToken, as the List* operations do."""
    sort_by = params.get("SortBy", default_sort)
    field = sort_keys.get(sort_by, "CreationTime")
    reverse = params.get("SortOrder", "Descending") == "Descending"
    items = sorted(items, key=lambda r: (r.get(field) or 0, r.get("_name", "")), reverse=reverse)
    token = params.get("NextToken")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise ValidationException("Invalid pagination token.") from None
    size = int(params.get("MaxResults") or DEFAULT_MAX_RESULTS)
    page = items[start : start + size]
    next_token = str(start + size) if start + size < len(items) else None
    return page, next_token


def _filter_times(items: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        ("CreationTimeAfter", "CreationTime", lambda v, bound: v > bound),
        ("CreationTimeBefore", "CreationTime", lambda v, bound: v < bound),
        ("LastModifiedTimeAfter", "LastModifiedTime", lambda v, bound: v > bound),
        ("LastModifiedTimeBefore", "LastModifiedTime", lambda v, bound: v < bound),
    ]
    for param, field, ok in checks:
        if params.get(param) is not None:
            bound = float(params[param])
            items = [r for r in items if ok(float(r.get(field, 0)), bound)]
    if params.get("NameContains"):
        needle = params["NameContains"]
        items = [r for r in items if needle in r["_name"]]
    return items


class SageMakerBackend:
    """The local SageMaker service: every control-plane operation, the runtime's router."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.store = JsonStore(config.state_dir)
        self.lock = threading.RLock()
        self.training_jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.endpoint_configs: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.runners: dict[str, TrainingJobRunner] = {}
        self.deployments: dict[str, Deployment] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._background: list[threading.Thread] = []
        self.closing = False
        self.s3 = boto3.client("s3")
        self.capture = CaptureService(
            self.s3,
            config.state_dir / "capture-spool",
            flush_interval_s=config.capture_flush_interval_s,
            flush_bytes=config.capture_flush_bytes,
        )
        self.router = EndpointRouter(
            config.region, config.account_id, invocation_timeout_s=config.invocation_timeout_s
        )

    # -- helpers -----------------------------------------------------------------------------
    def arn(self, kind: str, name: str) -> str:
        """`arn:aws:sagemaker:<region>:<account>:<kind>/<name-lowercased>`."""
        return (
            f"arn:aws:sagemaker:{self.config.region}:{self.config.account_id}:{kind}/{name.lower()}"
        )

    def _save(self, kind: str, record: dict[str, Any]) -> None:
        self.store.put(kind, record["_name"], record)

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._background = [t for t in self._background if t.is_alive()]
        self._background.append(thread)
        thread.start()
        return thread

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the persisted state; end interrupted jobs; bring endpoints back up."""
        with self.lock:
            self.training_jobs = self.store.load_all("training-jobs")
            self.models = self.store.load_all("models")
            self.endpoint_configs = self.store.load_all("endpoint-configs")
            self.endpoints = self.store.load_all("endpoints")
            for job in self.training_jobs.values():
                self._recover_training_job(job)
            for endpoint in list(self.endpoints.values()):
                self._recover_endpoint(endpoint)

    def _recover_training_job(self, job: dict[str, Any]) -> None:
        pid = job.pop("_pid", None)
        if pid:
            kill_stale_group(int(pid), job["_jobDir"])
        if job["TrainingJobStatus"] not in ("InProgress", "Stopping"):
            return
        now = time.time()
        transitions = job.setdefault("SecondaryStatusTransitions", [])
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = now
        transitions.append(
            {
                "Status": "Failed",
                "StartTime": now,
                "EndTime": now,
                "StatusMessage": "Training job failed",
            }
        )
        job.update(
            TrainingJobStatus="Failed",
            SecondaryStatus="Failed",
            FailureReason=(
                "InternalServerError: sagemaker-local stopped while the job was running; "
                "the job cannot be resumed."
            ),
            TrainingEndTime=now,
            LastModifiedTime=now,
        )
        self._save("training-jobs", job)

    def _recover_endpoint(self, endpoint: dict[str, Any]) -> None:
        for server in endpoint.pop("_servers", []):
            if server.get("pid"):
                kill_stale_group(int(server["pid"]), str(self.state_dir / "models"))
        status = endpoint["EndpointStatus"]
        name = endpoint["_name"]
        if status == "Deleting":
            del self.endpoints[name]
            self.store.delete("endpoints", name)
            return
        if status not in ACTIVE_ENDPOINT_STATUSES or not endpoint.get("_deployed"):
            self._save("endpoints", endpoint)
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
        self._save("endpoints", endpoint)
        self._start_deployment(name, endpoint["_deployed"], mode)

    def shutdown(self) -> None:
        """Stop everything this process started; flush capture; keep endpoints for a restart."""
        with self.lock:
            self.closing = True
            deployments = list(self.deployments.values())
            runners = list(self.runners.values())
        for deployment in deployments:
            deployment.cancelled.set()
        for runner in runners:
            runner.interrupt()
        for deployment in deployments:
            if deployment.thread is not None:
                deployment.thread.join(timeout=30)
        for runner in runners:
            runner.join(timeout=30)
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
                self._save("endpoints", endpoint)

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
                        }
                        for v in route.variants
                    }
                endpoints[name] = {"status": record["EndpointStatus"], "variants": variants}
            jobs = {
                name: {"status": job["TrainingJobStatus"], "pid": job.get("_pid")}
                for name, job in self.training_jobs.items()
            }
        return {
            "status": "ok",
            "service": "sagemaker-local",
            "endpoints": endpoints,
            "trainingJobs": jobs,
        }

    # -- training jobs -------------------------------------------------------------------------
    def create_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateTrainingJob: record the job and start its runner."""
        name = params["TrainingJobName"]
        arn = self.arn("training-job", name)
        spec = params.get("AlgorithmSpecification") or {}
        if not (spec.get("TrainingImage") or spec.get("AlgorithmName")):
            raise ValidationException(
                "AlgorithmSpecification must name a TrainingImage or an AlgorithmName."
            )
        with self.lock:
            if name in self.training_jobs:
                raise ResourceInUse(
                    "Training job names must be unique within an AWS account and region, "
                    f"and a training job with this name already exists ({arn})"
                )
            running = sum(1 for r in self.runners.values() if r.is_alive())
            if running >= self.config.max_training_jobs:
                raise ResourceLimitExceeded(
                    f"The account-level service limit 'Number of running training jobs' is "
                    f"{self.config.max_training_jobs} Jobs, with current utilization of {running}."
                )
            now = time.time()
            job = {
                **copy.deepcopy({k: v for k, v in params.items() if k != "Tags"}),
                "_name": name,
                "_tags": params.get("Tags", []),
                "_jobDir": str(self.state_dir / "training-jobs" / name),
                "TrainingJobArn": arn,
                "HyperParameters": params.get("HyperParameters", {}),
                "StoppingCondition": params.get("StoppingCondition")
                or {"MaxRuntimeInSeconds": 86400},
                "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
                "EnableInterContainerTrafficEncryption": params.get(
                    "EnableInterContainerTrafficEncryption", False
                ),
                "EnableManagedSpotTraining": params.get("EnableManagedSpotTraining", False),
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
                "SecondaryStatusTransitions": [
                    {
                        "Status": "Starting",
                        "StartTime": now,
                        "StatusMessage": "Launching requested ML instances",
                    }
                ],
                "CreationTime": now,
                "LastModifiedTime": now,
            }
            self.training_jobs[name] = job
            self._save("training-jobs", job)
            runner = TrainingJobRunner(
                copy.deepcopy(job),
                Path(job["_jobDir"]),
                lambda **changes: self._training_update(name, **changes),
            )
            self.runners[name] = runner
            runner.start()
        return {"TrainingJobArn": arn}

    def _training_update(
        self,
        name: str,
        status: str | None = None,
        secondary: tuple[str, str] | None = None,
        final: bool = False,
        **fields: Any,
    ) -> None:
        with self.lock:
            job = self.training_jobs.get(name)
            if job is None:
                return
            now = time.time()
            if "pid" in fields:
                pid = fields.pop("pid")
                if pid is None:
                    job.pop("_pid", None)
                else:
                    job["_pid"] = pid
            if secondary is not None:
                sec_status, message = secondary
                transitions = job.setdefault("SecondaryStatusTransitions", [])
                if transitions and transitions[-1]["Status"] == sec_status:
                    transitions[-1]["StatusMessage"] = message
                else:
                    if transitions:
                        transitions[-1].setdefault("EndTime", now)
                    transitions.append(
                        {"Status": sec_status, "StartTime": now, "StatusMessage": message}
                    )
                if final:
                    transitions[-1].setdefault("EndTime", now)
                job["SecondaryStatus"] = sec_status
            if status is not None:
                job["TrainingJobStatus"] = status
            job.update(fields)
            job["LastModifiedTime"] = now
            self._save("training-jobs", job)
            if final:
                self.runners.pop(name, None)

    def _training_job(self, name: str) -> dict[str, Any]:
        job = self.training_jobs.get(name)
        if job is None:
            raise ValidationException("Requested resource not found.")
        return job

    def describe_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeTrainingJob."""
        with self.lock:
            return copy.deepcopy(self._training_job(params["TrainingJobName"]))

    def stop_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """StopTrainingJob: Stopping now, Stopped once the process is gone."""
        name = params["TrainingJobName"]
        with self.lock:
            job = self.training_jobs.get(name)
            if job is None:
                raise ResourceNotFound("Requested resource not found.")
            if job["TrainingJobStatus"] != "InProgress":
                raise ValidationException(
                    "The request was rejected because the training job is in status "
                    f"{job['TrainingJobStatus']}."
                )
            runner = self.runners.get(name)
            self._training_update(
                name, status="Stopping", secondary=("Stopping", "Stopping the training job")
            )
        if runner is not None:
            runner.stop()
        return {}

    def list_training_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListTrainingJobs."""
        with self.lock:
            items = _filter_times(list(self.training_jobs.values()), params)
            if params.get("StatusEquals"):
                items = [j for j in items if j["TrainingJobStatus"] == params["StatusEquals"]]
            page, token = _page(
                items,
                params,
                {"Name": "_name", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"},
            )
            summaries = [
                {
                    k: j.get(k)
                    for k in (
                        "TrainingJobName",
                        "TrainingJobArn",
                        "CreationTime",
                        "TrainingEndTime",
                        "LastModifiedTime",
                        "TrainingJobStatus",
                        "SecondaryStatus",
                    )
                }
                for j in page
            ]
        return {"TrainingJobSummaries": summaries, "NextToken": token}

    # -- models --------------------------------------------------------------------------------
    def create_model(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateModel (one container: PrimaryContainer or a one-element Containers)."""
        name = params["ModelName"]
        arn = self.arn("model", name)
        containers = (
            [params["PrimaryContainer"]]
            if params.get("PrimaryContainer")
            else params.get("Containers") or []
        )
        if not containers:
            raise ValidationException("Either PrimaryContainer or Containers must be specified.")
        if len(containers) > 1:
            raise ValidationException("sagemaker-local serves models with one container only.")
        container = containers[0]
        if not (container.get("Image") or container.get("ModelPackageName")):
            raise ValidationException("Either Image or ModelPackageName must be specified.")
        with self.lock:
            if name in self.models:
                raise ValidationException(f'Cannot create already existing model "{arn}".')
            record = {
                **copy.deepcopy({k: v for k, v in params.items() if k != "Tags"}),
                "_name": name,
                "_tags": params.get("Tags", []),
                "ModelArn": arn,
                "EnableNetworkIsolation": params.get("EnableNetworkIsolation", False),
                "CreationTime": time.time(),
            }
            self.models[name] = record
            self._save("models", record)
        return {"ModelArn": arn}

    def _model(self, name: str) -> dict[str, Any]:
        model = self.models.get(name)
        if model is None:
            raise ValidationException(f'Could not find model "{self.arn("model", name)}".')
        return model

    def describe_model(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeModel."""
        with self.lock:
            return copy.deepcopy(self._model(params["ModelName"]))

    def delete_model(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteModel (running endpoints keep serving it, as on AWS)."""
        name = params["ModelName"]
        with self.lock:
            self._model(name)
            del self.models[name]
            self.store.delete("models", name)
            in_use = any(
                name in (e.get("_deployed") or {}).get("models", {})
                for e in self.endpoints.values()
            )
        if not in_use:
            shutil.rmtree(self.state_dir / "models" / name, ignore_errors=True)
        return {}

    def list_models(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListModels."""
        with self.lock:
            items = _filter_times(list(self.models.values()), params)
            page, token = _page(items, params, {"Name": "_name", "CreationTime": "CreationTime"})
            summaries = [
                {k: m.get(k) for k in ("ModelName", "ModelArn", "CreationTime")} for m in page
            ]
        return {"Models": summaries, "NextToken": token}

    # -- endpoint configs ----------------------------------------------------------------------
    def create_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateEndpointConfig (with DataCaptureConfig)."""
        name = params["EndpointConfigName"]
        arn = self.arn("endpoint-config", name)
        variants = params["ProductionVariants"]
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise ValidationException(
                "Production variant names must be unique within an endpoint config."
            )
        if params.get("AsyncInferenceConfig"):
            raise ValidationException("sagemaker-local does not serve asynchronous inference.")
        with self.lock:
            if name in self.endpoint_configs:
                raise ValidationException(
                    f'Cannot create already existing endpoint configuration "{arn}".'
                )
            for variant in variants:
                if not variant.get("ModelName"):
                    raise ValidationException(f"Variant {variant['VariantName']} names no model.")
                self._model(variant["ModelName"])
            stored_variants = [
                {"InitialVariantWeight": 1.0, "InitialInstanceCount": 1, **copy.deepcopy(v)}
                for v in variants
            ]
            capture = copy.deepcopy(params.get("DataCaptureConfig"))
            if capture is not None:
                capture.setdefault("EnableCapture", True)
            record = {
                **copy.deepcopy({k: v for k, v in params.items() if k != "Tags"}),
                "_name": name,
                "_tags": params.get("Tags", []),
                "EndpointConfigArn": arn,
                "ProductionVariants": stored_variants,
                "DataCaptureConfig": capture,
                "CreationTime": time.time(),
            }
            self.endpoint_configs[name] = record
            self._save("endpoint-configs", record)
        return {"EndpointConfigArn": arn}

    def _endpoint_config(self, name: str) -> dict[str, Any]:
        config = self.endpoint_configs.get(name)
        if config is None:
            raise ValidationException(
                f'Could not find endpoint configuration "{self.arn("endpoint-config", name)}".'
            )
        return config

    def describe_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpointConfig."""
        with self.lock:
            return copy.deepcopy(self._endpoint_config(params["EndpointConfigName"]))

    def delete_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteEndpointConfig (endpoints using it keep running, as on AWS)."""
        name = params["EndpointConfigName"]
        with self.lock:
            self._endpoint_config(name)
            del self.endpoint_configs[name]
            self.store.delete("endpoint-configs", name)
        return {}

    def list_endpoint_configs(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListEndpointConfigs."""
        with self.lock:
            items = _filter_times(list(self.endpoint_configs.values()), params)
            page, token = _page(items, params, {"Name": "_name", "CreationTime": "CreationTime"})
            summaries = [
                {k: c.get(k) for k in ("EndpointConfigName", "EndpointConfigArn", "CreationTime")}
                for c in page
            ]
        return {"EndpointConfigs": summaries, "NextToken": token}

    # -- endpoints -----------------------------------------------------------------------------
    def _snapshot(self, config_name: str) -> dict[str, Any]:
        """The config and its models as deployed: an endpoint outlives their deletion."""
        config = self._endpoint_config(config_name)
        models = {}
        for variant in config["ProductionVariants"]:
            models[variant["ModelName"]] = copy.deepcopy(self._model(variant["ModelName"]))
        return {"config": copy.deepcopy(config), "models": models}

    def _endpoint(self, name: str) -> dict[str, Any]:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ValidationException(f'Could not find endpoint "{self.arn("endpoint", name)}".')
        return endpoint

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
            self.endpoints[name] = record
            self._save("endpoints", record)
            self._start_deployment(name, snapshot, "create")
        return {"EndpointArn": arn}

    def update_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """UpdateEndpoint: Updating; the new servers take traffic once up, then the old stop."""
        name = params["EndpointName"]
        with self.lock:
            endpoint = self._endpoint(name)
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
            self._save("endpoints", endpoint)
            self._start_deployment(name, snapshot, "update")
            return {"EndpointArn": endpoint["EndpointArn"]}

    def describe_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpoint."""
        with self.lock:
            return copy.deepcopy(self._endpoint(params["EndpointName"]))

    def delete_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        """DeleteEndpoint: Deleting while its servers stop and its capture is flushed."""
        name = params["EndpointName"]
        with self.lock:
            endpoint = self._endpoint(name)
            if endpoint["EndpointStatus"] == "Deleting":
                return {}
            endpoint.update(EndpointStatus="Deleting", LastModifiedTime=time.time())
            self._save("endpoints", endpoint)
            deployment = self.deployments.get(name)
            if deployment is not None:
                deployment.cancelled.set()
            route = self.router.remove_route(name)

        def finish() -> None:
            if deployment is not None and deployment.thread is not None:
                deployment.thread.join()
            if route is not None:
                self._retire_route(route)
            with self.lock:
                if self.endpoints.get(name) is endpoint:
                    del self.endpoints[name]
                    self.store.delete("endpoints", name)

        self._spawn(finish, f"delete-{name}")
        return {}

    def list_endpoints(self, params: dict[str, Any]) -> dict[str, Any]:
        """ListEndpoints."""
        with self.lock:
            items = _filter_times(list(self.endpoints.values()), params)
            if params.get("StatusEquals"):
                items = [e for e in items if e["EndpointStatus"] == params["StatusEquals"]]
            page, token = _page(
                items,
                params,
                {"Name": "_name", "CreationTime": "CreationTime", "Status": "EndpointStatus"},
            )
            summaries = [
                {
                    k: e.get(k)
                    for k in (
                        "EndpointName",
                        "EndpointArn",
                        "CreationTime",
                        "LastModifiedTime",
                        "EndpointStatus",
                    )
                }
                for e in page
            ]
        return {"Endpoints": summaries, "NextToken": token}

    # -- deployments ---------------------------------------------------------------------------
    def _start_deployment(self, name: str, snapshot: dict[str, Any], mode: str) -> None:
        deployment = Deployment(mode)
        self.deployments[name] = deployment
        deployment.thread = threading.Thread(
            target=self._deploy,
            args=(name, snapshot, deployment),
            name=f"deploy-{name}",
            daemon=True,
        )
        deployment.thread.start()

    def _model_lock(self, model_name: str) -> threading.Lock:
        with self.lock:
            return self._model_locks.setdefault(model_name, threading.Lock())

    def _launch_variants(
        self,
        name: str,
        snapshot: dict[str, Any],
        deployment: Deployment,
        servers: list[ModelServer],
    ) -> list[VariantRoute]:
        variants = []
        for pv in snapshot["config"]["ProductionVariants"]:
            if deployment.cancelled.is_set():
                raise DeploymentFailed("deployment cancelled")
            model = snapshot["models"][pv["ModelName"]]
            container = model.get("PrimaryContainer") or model["Containers"][0]
            model_dir = self.state_dir / "models" / pv["ModelName"]
            try:
                with self._model_lock(pv["ModelName"]):
                    prepare_model(self.s3, container, model_dir)
            except ModelArchiveError as exc:
                raise DeploymentFailed(f"ClientError: {exc}") from exc
            stamp = time.strftime("%Y%m%dT%H%M%S")
            log_path = self.state_dir / "endpoints" / name / f"{pv['VariantName']}-{stamp}.log"
            server = ModelServer(model_dir, log_path, container.get("Environment"))
            server.start()
            servers.append(server)
            variants.append(
                VariantRoute(
                    pv["VariantName"],
                    float(pv.get("InitialVariantWeight", 1.0)),
                    server,
                    container.get("Image", ""),
                )
            )
        for pv, variant in zip(snapshot["config"]["ProductionVariants"], variants, strict=True):
            timeout = (
                pv.get("ContainerStartupHealthCheckTimeoutInSeconds")
                or self.config.startup_timeout_s
            )
            try:
                variant.server.wait_ready(float(timeout), deployment.cancelled.is_set)
            except ModelServerFailed as exc:
                raise DeploymentFailed(
                    f"The primary container for production variant {variant.name} did not pass "
                    f"the ping health check. Please check CloudWatch logs for this endpoint. "
                    f"({exc})"
                ) from exc
        return variants

    def _deploy(self, name: str, snapshot: dict[str, Any], deployment: Deployment) -> None:
        servers: list[ModelServer] = []
        writer = None
        started = time.monotonic()
        try:
            variants = self._launch_variants(name, snapshot, deployment, servers)
            settings = CaptureSettings.from_config(snapshot["config"].get("DataCaptureConfig"))
            writer = self.capture.writer(name, settings) if settings else None
            route = Route(name, variants, writer, servers)
            with self.lock:
                endpoint = self.endpoints.get(name)
                if deployment.cancelled.is_set() or endpoint is None or self.closing:
                    raise DeploymentFailed("deployment cancelled")
                old = self.router.route(name)
                self.router.set_route(route)
                self._mark_in_service(endpoint, snapshot, route)
            log.info(
                "endpoint %s InService in %.2f s (%s)",
                name,
                time.monotonic() - started,
                deployment.mode,
            )
            if old is not None and old is not route:
                self._retire_route(old)
        except Exception as exc:  # every failure ends the deployment
            if not isinstance(exc, DeploymentFailed):
                log.exception("deployment of %s failed", name)
            if writer is not None:
                self.capture.retire(writer)
            for server in servers:
                server.stop()
            self._deployment_failed(name, deployment, str(exc))
        finally:
            with self.lock:
                if self.deployments.get(name) is deployment:
                    del self.deployments[name]

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
        self._save("endpoints", endpoint)

    def _deployment_failed(self, name: str, deployment: Deployment, reason: str) -> None:
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
            self._save("endpoints", endpoint)
        log.warning("endpoint %s deployment (%s) failed: %s", name, deployment.mode, reason)
