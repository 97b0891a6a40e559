"""Training-job runner: a SageMaker training job as a local process under the training contract.

Layout of a job folder (`<state>/training-jobs/<name>/`) mirrors `/opt/ml` in a container:
`input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`, `input/data/<channel>/`,
`code/`, `model/`, `output/` (with `failure` and `data/`), `checkpoints/`, `logs/`.
The script gets hyperparameters as `--key value` and the sagemaker-training toolkit's `SM_*`
environment (`training_contract`); its output goes to the job log file and to CloudWatch Logs
(`training_logs`: `/aws/sagemaker/TrainingJobs`, stream `<job>/algo-1-<epoch>`).

The job's `TrainingImage` chooses what runs (`EXECUTORS`): the built-in image-classification
algorithm (`algorithms/image_classification`), the PyTorch framework images (the user's entry
point from `sagemaker_program` / `sagemaker_submit_directory`), or any other image in Docker when
an engine is reachable; without one such a job fails at once, its FailureReason naming the image.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from . import processes
from .algorithms.image_classification import METRIC_DEFINITIONS as IC_METRICS
from .algorithms.images import ImageKind, classify_image
from .archive import ModelArchiveError, safe_extract
from .s3io import download_manifest, download_prefix, join_s3, split_s3_uri, upload_folder
from .training_contract import (
    HOST,
    REPO_ROOT,
    decode_hyperparameter,
    script_arguments,
    training_environment,
    user_hyperparameters,
    write_config_files,
)
from .training_logs import CloudWatchLogShipper

log = logging.getLogger(__name__)

DEFAULT_SOURCE_DIR = REPO_ROOT / "model"
DEFAULT_PROGRAM = "train.py"
DEFAULT_MAX_RUNTIME_S = 86400
FAILURE_REASON_MAX = 1024
STOP_GRACE_S = 10.0

Update = Callable[..., None]
IMAGE_CLASSIFICATION_MODULE = "services.sagemaker_local.algorithms.image_classification.train"
DOCKER_CHECK_TIMEOUT_S = 10.0
# Metric definitions a built-in algorithm brings (applied when the job gives none, as on AWS).
BUILTIN_METRICS: dict[ImageKind, tuple[dict[str, str], ...]] = {
    ImageKind.IMAGE_CLASSIFICATION: IC_METRICS,
}


class JobFailed(Exception):
    """A training job failure with its AWS-style FailureReason."""


class TrainingJobRunner(threading.Thread):
    """Runs one training job to its end state, reporting every status change through update."""

    def __init__(self, job: dict[str, Any], job_dir: Path, update: Update) -> None:
        super().__init__(name=f"training-{job['TrainingJobName']}", daemon=True)
        self.job = job
        self.name_ = job["TrainingJobName"]
        self.job_dir = job_dir
        self.update = update
        self.s3 = boto3.client("s3")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_requested = threading.Event()
        self.stop_cause = "Stopped"
        self.stop_grace_s: float | None = None
        self.interrupted = False
        spec = job.get("AlgorithmSpecification", {})
        self.image = spec.get("TrainingImage") or spec.get("AlgorithmName") or ""
        self.kind = classify_image(self.image)
        definitions = spec.get("MetricDefinitions") or BUILTIN_METRICS.get(self.kind, ())
        self.metric_regexes = [(m["Name"], re.compile(m["Regex"])) for m in definitions]
        self.metrics: dict[str, dict[str, Any]] = {}

    # -- control ---------------------------------------------------------------------------
    def stop(self, cause: str = "Stopped", grace_s: float | None = None) -> None:
        """Ask the job to stop (StopTrainingJob, max runtime, shutdown): SIGTERM, then SIGKILL."""
        self.stop_cause = cause
        self.stop_grace_s = grace_s
        self.stop_requested.set()
        if self.proc is not None and self.proc.poll() is None:
            processes.terminate(self.proc, grace_s)

    def interrupt(self) -> None:
        """sagemaker-local is shutting down: end the job as Failed, not Stopped."""
        self.interrupted = True
        self.stop("Interrupted", grace_s=STOP_GRACE_S)

    # -- the job -------------------------------------------------------------------------------
    def secondary(self, status: str, message: str, **fields: Any) -> None:
        """Move to a new secondary status."""
        self.update(secondary=(status, message), **fields)

    def run(self) -> None:
        """Download, train, upload; always ends in Completed, Failed or Stopped."""
        started = time.time()
        try:
            self.secondary("Starting", "Preparing the instances for training")
            if self.kind is ImageKind.CONTAINER:
                self._require_container_engine()
            self._prepare_folders()
            self.secondary("Downloading", "Downloading input data")
            self._download_inputs()
            if self.stop_requested.is_set():
                raise InterruptedError
            self.secondary(
                "Training",
                "Training image download completed. Training in progress.",
                TrainingStartTime=time.time(),
            )
            rc = self._train()
            if self.stop_requested.is_set():
                raise InterruptedError
            if rc != 0:
                raise JobFailed(self._failure_reason(rc))
            self.secondary("Uploading", "Uploading generated training model")
            artifacts = self._upload_outputs()
            self._finish("Completed", ("Completed", "Training job completed"), started, artifacts)
        except InterruptedError:
            self._stopped(started)
        except JobFailed as exc:
            self._failed(str(exc), started)
        except Exception as exc:  # every failure must end the job
            log.exception("training job %s failed", self.name_)
            reason = f"ClientError: {exc}" if "ClientError" in type(exc).__name__ else str(exc)
            self._failed(reason, started)

    def _finish(
        self,
        status: str,
        secondary: tuple[str, str],  # (secondary status, its message), as `update` takes it
        started: float,
        artifacts: str | None = None,
        reason: str | None = None,
    ) -> None:
        self._sync_checkpoints()
        end = time.time()
        fields: dict[str, Any] = {
            "TrainingEndTime": end,
            "TrainingTimeInSeconds": max(1, int(end - started)),
            "BillableTimeInSeconds": max(1, int(end - started)),
        }
        if artifacts:
            fields["ModelArtifacts"] = {"S3ModelArtifacts": artifacts}
        if reason:
            fields["FailureReason"] = reason[:FAILURE_REASON_MAX]
        self.update(status=status, secondary=secondary, final=True, **fields)

    def _failed(self, reason: str, started: float) -> None:
        self._finish("Failed", ("Failed", "Training job failed"), started, reason=reason)

    def _stopped(self, started: float) -> None:
        if self.interrupted:
            self._failed(
                "InternalServerError: sagemaker-local shut down while the job was running.",
                started,
            )
            return
        self.update(status="Stopping", secondary=("Stopping", "Stopping the training job"))
        artifacts = None
        try:
            if any((self.job_dir / "model").iterdir()):
                artifacts = self._upload_outputs()
        except Exception as exc:
            log.warning("could not upload artifacts of stopped job %s: %s", self.name_, exc)
        if self.stop_cause == "MaxRuntimeExceeded":
            message = "Training job runtime exceeded MaxRuntimeInSeconds provided"
        else:
            message = "Training job stopped"
        self._finish("Stopped", (self.stop_cause, message), started, artifacts)

    # -- steps ---------------------------------------------------------------------------------
    def _prepare_folders(self) -> None:
        if self.job_dir.exists():
            shutil.rmtree(self.job_dir)
        for sub in ("input/config", "input/data", "code", "model", "output/data", "checkpoints"):
            (self.job_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.job_dir / "logs").mkdir(parents=True, exist_ok=True)

    def _download_inputs(self) -> None:
        for channel in self.job.get("InputDataConfig", []):
            name = channel["ChannelName"]
            source = channel["DataSource"].get("S3DataSource")
            if not source:
                raise JobFailed(f"ClientError: channel {name} has no S3DataSource.")
            target = self.job_dir / "input" / "data" / name
            try:
                count = self._download_channel(source, target)
            except JobFailed:
                raise
            except Exception as exc:
                raise JobFailed(f"ClientError: Data download failed:{exc}") from exc
            if count == 0:
                raise JobFailed(
                    f"ClientError: Data download failed:No S3 objects found under S3 URL "
                    f'"{source["S3Uri"]}" given in input data source. Please ensure that the '
                    f"bucket exists in the selected region, that objects exist under that S3 "
                    f'prefix, and that the role "{self.job.get("RoleArn")}" has '
                    f'"s3:ListBucket" permissions.'
                )
        if self.kind is ImageKind.PYTORCH:
            self._fetch_code()
        checkpoint = self.job.get("CheckpointConfig")
        if checkpoint and checkpoint.get("S3Uri"):
            try:
                download_prefix(self.s3, checkpoint["S3Uri"], self.job_dir / "checkpoints")
            except Exception as exc:
                raise JobFailed(f"ClientError: Checkpoint download failed:{exc}") from exc

    def _download_channel(self, source: dict[str, Any], target: Path) -> int:
        if source.get("S3DataType", "S3Prefix") == "ManifestFile":
            return download_manifest(self.s3, source["S3Uri"], target)
        return download_prefix(self.s3, source["S3Uri"], target)

    def _fetch_code(self) -> None:
        hps = self.job.get("HyperParameters", {})
        submit = decode_hyperparameter(hps.get("sagemaker_submit_directory", ""))
        code = self.job_dir / "code"
        source: Path
        if not submit:
            source = DEFAULT_SOURCE_DIR
        elif str(submit).startswith("s3://"):
            archive = self.job_dir / "sourcedir.tar.gz"
            bucket, key = split_s3_uri(str(submit))
            self.s3.download_file(bucket, key, str(archive))
            try:
                safe_extract(archive, code)
            except ModelArchiveError as exc:
                raise JobFailed(f"ClientError: Cannot unpack the source code: {exc}") from exc
            return
        else:
            source = Path(str(submit).removeprefix("file://"))
        if source.is_dir():
            shutil.copytree(
                source, code, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        elif source.is_file() and tarfile.is_tarfile(source):
            try:
                safe_extract(source, code)
            except ModelArchiveError as exc:
                raise JobFailed(f"ClientError: Cannot unpack the source code: {exc}") from exc
        else:
            raise JobFailed(f"ClientError: sagemaker_submit_directory {submit} not found.")

    def _train(self) -> int:
        hps = self.job.get("HyperParameters", {})
        program = str(decode_hyperparameter(hps.get("sagemaker_program", DEFAULT_PROGRAM)))
        user_hps = user_hyperparameters(self.job)
        args = script_arguments(user_hps, self.job_dir / "checkpoints")
        configs = write_config_files(self.job, self.job_dir)
        env = training_environment(self.job, self.job_dir, program, args, user_hps, configs)
        command = EXECUTORS[self.kind](self, program, args)
        max_runtime = (self.job.get("StoppingCondition") or {}).get(
            "MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME_S
        )
        stream = f"{self.name_}/{HOST}-{int(time.time())}"
        shipper = CloudWatchLogShipper(stream)
        log_path = self.job_dir / "logs" / f"{HOST}.log"
        timer = threading.Timer(max_runtime, self.stop, args=("MaxRuntimeExceeded",))
        timer.daemon = True
        with open(log_path, "ab") as log_file:
            self.proc = processes.launch(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.job_dir / "code",
                env=env,
            )
            self.update(pid=self.proc.pid)
            if self.stop_requested.is_set():
                processes.terminate(self.proc, self.stop_grace_s)
            timer.start()
            try:
                assert self.proc.stdout is not None
                for raw in self.proc.stdout:
                    log_file.write(raw)
                    log_file.flush()
                    line = raw.decode(errors="replace").rstrip("\n")
                    shipper.add(line)
                    self._match_metrics(line)
                rc = self._wait_for_exit()
            finally:
                timer.cancel()
                shipper.close()
        self.update(pid=None)
        return rc

    def _wait_for_exit(self) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=STOP_GRACE_S if self.stop_requested.is_set() else None)
        except subprocess.TimeoutExpired:
            return processes.stop(self.proc, grace_s=0) or -9

    def _match_metrics(self, line: str) -> None:
        changed = False
        for name, regex in self.metric_regexes:
            match = regex.search(line)
            if match is None:
                continue
            try:
                value = float(match.group(1) if match.groups() else match.group(0))
            except ValueError:
                continue
            self.metrics[name] = {"MetricName": name, "Value": value, "Timestamp": time.time()}
            changed = True
        if changed:
            self.update(FinalMetricDataList=list(self.metrics.values()))

    def _failure_reason(self, rc: int) -> str:
        failure = self.job_dir / "output" / "failure"
        if failure.is_file():
            text = failure.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith(("ClientError:", "AlgorithmError:")):
                return text  # a built-in algorithm words its own reason, as AWS's do
            if text:
                return f"AlgorithmError: {text}"
        tail = self._log_tail()
        return f'AlgorithmError: ExecuteUserScriptError:\nExitCode {rc}\nErrorMessage "{tail}"'

    def _log_tail(self) -> str:
        path = self.job_dir / "logs" / f"{HOST}.log"
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-5:] if line.strip())

    # -- executors (one per image kind) ------------------------------------------------------
    def _script_command(self, program: str, args: list[str]) -> list[str]:
        """Framework image: the user's entry point with `--key value` hyperparameters."""
        script = self.job_dir / "code" / program
        if not script.is_file():
            raise JobFailed(f"ClientError: entry point {program} not found in the source code.")
        if program.endswith(".py"):
            return [sys.executable, str(script), *args]
        return [str(script), *args]

    def _image_classification_command(self, program: str, args: list[str]) -> list[str]:
        """The built-in algorithm reads its hyperparameters from the job's config files."""
        return [sys.executable, "-m", IMAGE_CLASSIFICATION_MODULE, "--ml-root", str(self.job_dir)]

    def _container_command(self, program: str, args: list[str]) -> list[str]:
        """Any other image: `docker run <image> train` with the job folder as /opt/ml."""
        command = ["docker", "run", "--rm", "--name", f"sagemaker-local-{self.name_}"]
        for sub in ("input", "model", "output", "checkpoints"):
            command += ["-v", f"{self.job_dir / sub}:/opt/ml/{sub}"]
        for key, value in (self.job.get("Environment") or {}).items():
            command += ["-e", f"{key}={value}"]
        return [*command, self.image, "train"]

    def _require_container_engine(self) -> None:
        """Fail at once, naming the image, when no Docker engine can run it."""
        why = docker_unavailable()
        if why:
            raise JobFailed(
                f"ClientError: Cannot run training image {self.image!r}: sagemaker-local runs "
                f"the built-in image-classification algorithm and the PyTorch framework images "
                f"as local processes; any other image needs a Docker engine, and {why}."
            )

    def _upload_outputs(self) -> str:
        output_path = self.job["OutputDataConfig"]["S3OutputPath"]
        prefix = join_s3(output_path, self.name_, "output")
        archive = self.job_dir / "output" / "model.tar.gz"
        pack(self.job_dir / "model", archive)
        bucket, key = split_s3_uri(join_s3(prefix, "model.tar.gz"))
        self.s3.upload_file(str(archive), bucket, key)
        data_dir = self.job_dir / "output" / "data"
        if data_dir.is_dir() and any(data_dir.iterdir()):
            output_archive = self.job_dir / "output" / "output.tar.gz"
            pack(data_dir, output_archive)
            obucket, okey = split_s3_uri(join_s3(prefix, "output.tar.gz"))
            self.s3.upload_file(str(output_archive), obucket, okey)
        return f"s3://{bucket}/{key}"

    def _sync_checkpoints(self) -> None:
        """Upload the checkpoints (whatever the outcome: a failed job resumes from them)."""
        checkpoint = self.job.get("CheckpointConfig")
        folder = self.job_dir / "checkpoints"
        if not (checkpoint and checkpoint.get("S3Uri") and folder.is_dir()):
            return
        try:
            upload_folder(self.s3, folder, checkpoint["S3Uri"])
        except Exception as exc:
            log.warning("checkpoint upload of %s failed: %s", self.name_, exc)


EXECUTORS: dict[ImageKind, Callable[[TrainingJobRunner, str, list[str]], list[str]]] = {
    ImageKind.IMAGE_CLASSIFICATION: TrainingJobRunner._image_classification_command,
    ImageKind.PYTORCH: TrainingJobRunner._script_command,
    ImageKind.CONTAINER: TrainingJobRunner._container_command,
}


def docker_unavailable() -> str | None:
    """Why no Docker engine can run a container here, or None when one answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command is installed"
    try:
        probe = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=DOCKER_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Docker engine did not answer ({exc})"
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines() or ["docker info failed"]
        return f"the Docker engine is not reachable ({lines[-1]})"
    return None


def pack(folder: Path, archive: Path) -> None:
    """Pack a folder's contents (not the folder itself) as a tar.gz, the way SageMaker does."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
