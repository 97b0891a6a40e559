"""Training jobs (training_jobs, training, s3io): complete, fail, stop, refuse hostile input."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, WaiterError

from scones.testing_processes import alive as pid_alive
from tests.sagemaker_local_harness import (
    ACCOUNT,
    WAIT,
    SageMakerLocal,
    list_keys,
    sm,
    training_job,
    wait_for,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


def test_training_job_completes_and_writes_the_archive(
    sagemaker_local: SageMakerLocal, bucket: str, train_script: Path, training_data: None
) -> None:
    client = sm()
    name = f"train-ok-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=f"checkpoints/{name}/seed.ckpt", Body=b"from an earlier run")
    params = training_job(
        name, bucket, train_script, CheckpointConfig={"S3Uri": f"s3://{bucket}/checkpoints/{name}"}
    )
    arn = client.create_training_job(**params)["TrainingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}"
    client.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig=WAIT
    )
    job = client.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"
    ]  # fmt: skip
    key = f"training-output/{name}/output/model.tar.gz"
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/{key}"
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics == {"val_acc": pytest.approx(0.8), "train_loss": pytest.approx(0.33)}

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["summary.json"]
        summary = json.loads(tar.extractfile("summary.json").read())  # type: ignore[union-attr]
    assert summary["files"] == ["a/1.txt", "b.txt"]
    assert summary["args"]["epochs"] == 3 and summary["args"]["lr"] == 0.05
    assert summary["args"]["checkpoint_dir"].endswith(f"training-jobs/{name}/checkpoints")
    assert summary["checkpoints_at_start"] == ["seed.ckpt"]
    assert sorted(list_keys(bucket, f"checkpoints/{name}/")) == [
        f"checkpoints/{name}/last.ckpt", f"checkpoints/{name}/seed.ckpt"
    ]  # fmt: skip
    assert summary["sm_hps"] == {"epochs": 3, "lr": 0.05, "mode": "ok"}
    assert summary["sm_channels"] == ["train"] and summary["sm_hp_epochs"] == "3"
    assert summary["current_host"] == "algo-1"
    assert summary["hyperparameters.json"]["sagemaker_program"] == '"train_tiny.py"'
    assert summary["resourceconfig.json"]["hosts"] == ["algo-1"]
    assert summary["inputdataconfig.json"]["train"]["S3DistributionType"] == "FullyReplicated"
    output = f"training-output/{name}/output/output.tar.gz"
    assert output in list_keys(bucket, f"training-output/{name}/")

    job_dir = sagemaker_local.state_dir / "training-jobs" / name
    assert "training finished" in (job_dir / "logs" / "algo-1.log").read_text()
    logs = boto3.client("logs")
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/algo-1-"
    )["logStreams"]
    assert len(streams) == 1
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=streams[0]["logStreamName"]
    )["events"]
    assert "training finished" in [e["message"] for e in events]
    summaries = client.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
    assert [(s["TrainingJobName"], s["TrainingJobStatus"]) for s in summaries] == [
        (name, "Completed")
    ]


def test_failed_training_job_reports_the_failure_file(
    sagemaker_local: SageMakerLocal, bucket: str, train_script: Path, training_data: None
) -> None:
    client = sm()
    name = f"train-fail-{uuid.uuid4().hex[:8]}"
    client.create_training_job(**training_job(name, bucket, train_script, mode="fail"))
    with pytest.raises(WaiterError, match="Failed"):
        client.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig=WAIT
        )
    job = client.describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        "AlgorithmError: Validation accuracy 0.41 is below the minimum 0.80"
    )
    assert "ModelArtifacts" not in job


def test_stop_and_max_runtime_end_jobs_stopped(
    sagemaker_local: SageMakerLocal, bucket: str, train_script: Path, training_data: None
) -> None:
    client = sm()
    stopped = f"train-stop-{uuid.uuid4().hex[:8]}"
    timed_out = f"train-max-{uuid.uuid4().hex[:8]}"
    client.create_training_job(**training_job(stopped, bucket, train_script, mode="sleep"))
    client.create_training_job(
        **training_job(
            timed_out, bucket, train_script, mode="sleep",
            StoppingCondition={"MaxRuntimeInSeconds": 3},
        )
    )  # fmt: skip
    wait_for(
        lambda: (
            client.describe_training_job(TrainingJobName=stopped)["SecondaryStatus"] == "Training"
        ),
        "the job to start training",
    )
    pid = wait_for(lambda: sagemaker_local.health()["trainingJobs"][stopped]["pid"], "its pid")
    job_log = sagemaker_local.state_dir / "training-jobs" / stopped / "logs" / "algo-1.log"
    wait_for(lambda: "sleeping" in job_log.read_text(), "the script to write a partial model")
    client.stop_training_job(TrainingJobName=stopped)
    client.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=stopped, WaiterConfig=WAIT
    )
    job = client.describe_training_job(TrainingJobName=stopped)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert job["ModelArtifacts"]["S3ModelArtifacts"].endswith(f"{stopped}/output/model.tar.gz")
    assert not pid_alive(pid)
    with pytest.raises(ClientError, match="in status Stopped"):
        client.stop_training_job(TrainingJobName=stopped)

    client.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=timed_out, WaiterConfig=WAIT
    )
    job = client.describe_training_job(TrainingJobName=timed_out)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


STUBBORN_PY = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a script that will not stop when asked
print("ignoring SIGTERM", flush=True)
time.sleep(600)
"""


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(
    sagemaker_local: SageMakerLocal, bucket: str, training_data: None, tmp_path: Path
) -> None:
    (tmp_path / "stubborn.py").write_text(STUBBORN_PY)
    name = f"stubborn-{uuid.uuid4().hex[:6]}"
    params = training_job(name, bucket, tmp_path)
    params["HyperParameters"]["sagemaker_program"] = json.dumps("stubborn.py")
    sm().create_training_job(**params)
    pid = wait_for(lambda: sagemaker_local.health()["trainingJobs"][name]["pid"], "the job's pid")
    log_file = sagemaker_local.state_dir / "training-jobs" / name / "logs" / "algo-1.log"
    wait_for(lambda: log_file.exists() and "ignoring SIGTERM" in log_file.read_text(), "SIG_IGN")
    asked = time.monotonic()
    sm().stop_training_job(TrainingJobName=name)
    job = wait_for(
        lambda: (
            (d := sm().describe_training_job(TrainingJobName=name))["TrainingJobStatus"]
            == "Stopped"
            and d
        ),
        "Stopped",
    )
    took = time.monotonic() - asked
    print(f"stubborn job Stopped {took:.2f} s after StopTrainingJob (grace 2 s)")
    assert took >= 2.0, "SIGKILL only after the grace period"
    assert not pid_alive(pid)
    assert job["SecondaryStatus"] == "Stopped"


def test_an_invalid_metric_regex_is_refused_and_no_job_is_stored(
    sagemaker_local: SageMakerLocal, bucket: str, tmp_path: Path
) -> None:
    name = f"bad-regex-{uuid.uuid4().hex[:6]}"
    params = training_job(name, bucket, tmp_path)
    params["AlgorithmSpecification"]["MetricDefinitions"] = [{"Name": "acc", "Regex": "acc=(["}]
    with pytest.raises(ClientError) as caught:
        sm().create_training_job(**params)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "Invalid regular expression" in caught.value.response["Error"]["Message"]
    assert name not in [
        j["TrainingJobName"] for j in sm().list_training_jobs()["TrainingJobSummaries"]
    ]
    assert not (sagemaker_local.state_dir / "store" / "training-jobs" / f"{name}.json").exists()


def test_manifest_entries_outside_the_channel_fail_the_job_and_write_nothing(
    sagemaker_local: SageMakerLocal, bucket: str, training_data: None, tmp_path: Path
) -> None:
    s3 = boto3.client("s3")
    for entry in ("../../../escaped-manifest.txt", "/tmp/escaped-manifest-abs.txt"):
        name = f"manifest-{uuid.uuid4().hex[:6]}"
        key = f"manifests/{name}.json"
        manifest = [{"prefix": f"s3://{bucket}/data/train/"}, "b.txt", entry]
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
        params = training_job(name, bucket, tmp_path)
        source = params["InputDataConfig"][0]["DataSource"]["S3DataSource"]
        source.update(S3DataType="ManifestFile", S3Uri=f"s3://{bucket}/{key}")
        sm().create_training_job(**params)
        job = wait_for(
            lambda n=name: (
                (d := sm().describe_training_job(TrainingJobName=n))["TrainingJobStatus"]
                != "InProgress"
                and d
            ),
            "the job to end",
        )
        assert job["TrainingJobStatus"] == "Failed"
        assert entry in job["FailureReason"]
    assert not list(sagemaker_local.state_dir.parent.rglob("escaped-manifest*"))
    assert not Path("/tmp/escaped-manifest-abs.txt").exists()
