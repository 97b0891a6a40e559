"""Training jobs of the control plane: records, their status changes, runners.

Statuses move as on AWS: InProgress (Starting, Downloading, Training, Uploading) -> Completed |
Failed, or Stopping -> Stopped (StopTrainingJob, MaxRuntimeExceeded). A job that was running
when sagemaker-local stopped ends Failed on the next start (it cannot be resumed).
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

from .exceptions import ResourceInUse, ResourceLimitExceeded, ResourceNotFound, ValidationException
from .processes import kill_stale_group
from .records import (
    ControlPlaneState,
    Records,
    describe_operation,
    list_operation,
    request_record,
)
from .training import TrainingJobRunner


def check_metric_definitions(definitions: list[dict[str, Any]]) -> None:
    """Every MetricDefinitions regex compiles, before the job is stored (else 400)."""
    for definition in definitions:
        try:
            re.compile(definition["Regex"])
        except re.error as exc:
            raise ValidationException(
                f"Invalid regular expression {definition['Regex']!r} for metric "
                f"{definition['Name']!r}: {exc}"
            ) from None


class TrainingJobs:
    """CreateTrainingJob, DescribeTrainingJob, StopTrainingJob, ListTrainingJobs."""

    def __init__(self, state: ControlPlaneState, max_training_jobs: int) -> None:
        self.state_dir, self.lock, self.arn = state.state_dir, state.lock, state.arn
        self.max_training_jobs = max_training_jobs
        # DescribeTrainingJob of an unknown name: ValidationException (StopTrainingJob's is
        # ResourceNotFound), as AWS answers.
        self.training_jobs = Records(
            state.store,
            "training-jobs",
            lambda name: ValidationException("Requested resource not found."),
            (
                "TrainingJobName",
                "TrainingJobArn",
                "CreationTime",
                "TrainingEndTime",
                "LastModifiedTime",
                "TrainingJobStatus",
                "SecondaryStatus",
            ),
            status_field="TrainingJobStatus",
        )
        self.runners: dict[str, TrainingJobRunner] = {}

    def load(self) -> None:
        """Read the persisted jobs; end those that were running when the process stopped."""
        with self.lock:
            self.training_jobs.load()
            for job in self.training_jobs.values():
                self._recover_training_job(job)

    def interrupt_all(self, timeout_s: float = 30.0) -> None:
        """sagemaker-local stops: interrupt every runner and wait for it."""
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.interrupt()
        for runner in runners:
            runner.join(timeout=timeout_s)

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
        self.training_jobs.save(job)

    def create_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateTrainingJob: record the job and start its runner."""
        name = params["TrainingJobName"]
        arn = self.arn("training-job", name)
        spec = params.get("AlgorithmSpecification") or {}
        if not (spec.get("TrainingImage") or spec.get("AlgorithmName")):
            raise ValidationException(
                "AlgorithmSpecification must name a TrainingImage or an AlgorithmName."
            )
        check_metric_definitions(spec.get("MetricDefinitions") or [])
        with self.lock:
            if name in self.training_jobs:
                raise ResourceInUse(
                    "Training job names must be unique within an AWS account and region, "
                    f"and a training job with this name already exists ({arn})"
                )
            running = sum(1 for r in self.runners.values() if r.is_alive())
            if running >= self.max_training_jobs:
                raise ResourceLimitExceeded(
                    f"The account-level service limit 'Number of running training jobs' is "
                    f"{self.max_training_jobs} Jobs, with current utilization of {running}."
                )
            now = time.time()
            job = request_record(
                name,
                params,
                _jobDir=str(self.state_dir / "training-jobs" / name),
                TrainingJobArn=arn,
                HyperParameters=params.get("HyperParameters", {}),
                StoppingCondition=params.get("StoppingCondition") or {"MaxRuntimeInSeconds": 86400},
                EnableNetworkIsolation=params.get("EnableNetworkIsolation", False),
                EnableInterContainerTrafficEncryption=params.get(
                    "EnableInterContainerTrafficEncryption", False
                ),
                EnableManagedSpotTraining=params.get("EnableManagedSpotTraining", False),
                TrainingJobStatus="InProgress",
                SecondaryStatus="Starting",
                SecondaryStatusTransitions=[
                    {
                        "Status": "Starting",
                        "StartTime": now,
                        "StatusMessage": "Launching requested ML instances",
                    }
                ],
                CreationTime=now,
                LastModifiedTime=now,
            )
            self.training_jobs.add(job)
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
            self.training_jobs.save(job)
            if final:
                self.runners.pop(name, None)

    describe_training_job = describe_operation("training_jobs", "TrainingJobName")

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

    list_training_jobs = list_operation("training_jobs", "TrainingJobSummaries")
