"""sagemaker-local through boto3 only: training jobs, endpoints, runtime, data capture, restart.

The real process runs on a free port next to the `local_aws` emulator; the clients find it through
the profile's `services` section (never `endpoint_url` in code). Models and training scripts are
tiny ones written by the tests.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest
import torch
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError
from PIL import Image

from services.local_aws.profile import write_profile
from services.sagemaker_local.capture import CaptureSettings, capture_key, capture_record
from services.sagemaker_local.hosting import ModelArchiveError, safe_extract
from tests.conftest import free_port, selected_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 90.0
ACCOUNT = "123456789012"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-local-test"
WAIT = {"Delay": 1, "MaxAttempts": 120}
MAX_PAYLOAD = 6_291_456

INFERENCE_PY = textwrap.dedent(
    """
    import io
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


    def model_fn(model_dir):
        torch.set_num_threads(1)
        model = TinyNet()
        model.load_state_dict(torch.load(Path(model_dir) / "model.pth", weights_only=True))
        return model.eval()


    def input_fn(body, content_type):
        try:
            image = Image.open(io.BytesIO(body)).convert("RGB")
        except Exception as exc:
            raise ValueError(f"cannot decode the image: {exc}") from exc
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


    def predict_fn(data, model):
        with torch.no_grad():
            return torch.softmax(model(data), dim=1)


    def output_fn(prediction, accept):
        return json.dumps(prediction.tolist())
    """
)

TRAIN_PY = textwrap.dedent(
    """
    import argparse
    import json
    import os
    import sys
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--checkpoint-dir", default="/opt/ml/checkpoints")
    args = parser.parse_args()

    if args.mode == "fail":
        Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text(
            "Validation accuracy 0.41 is below the minimum 0.80"
        )
        print("giving up", flush=True)
        sys.exit(1)
    if args.mode == "sleep":
        Path(os.environ["SM_MODEL_DIR"], "partial.txt").write_text("partial")
        print("sleeping", flush=True)
        time.sleep(600)

    train = Path(os.environ["SM_CHANNEL_TRAIN"])
    config_dir = Path(os.environ["SM_INPUT_CONFIG_DIR"])
    for epoch in range(1, args.epochs + 1):
        print(f"epoch={epoch} train_loss={1 / epoch:.2f} val_loss={1.5 / epoch:.2f} "
              f"val_acc={0.5 + 0.1 * epoch:.3f}", flush=True)
    checkpoints_at_start = sorted(os.listdir(args.checkpoint_dir))
    Path(args.checkpoint_dir, "last.ckpt").write_text("checkpoint")
    summary = {
        "args": vars(args),
        "checkpoints_at_start": checkpoints_at_start,
        "files": sorted(str(p.relative_to(train)) for p in train.rglob("*") if p.is_file()),
        "sm_hps": json.loads(os.environ["SM_HPS"]),
        "sm_channels": json.loads(os.environ["SM_CHANNELS"]),
        "sm_hp_epochs": os.environ["SM_HP_EPOCHS"],
        "current_host": os.environ["SM_CURRENT_HOST"],
        "hyperparameters.json": json.loads((config_dir / "hyperparameters.json").read_text()),
        "resourceconfig.json": json.loads((config_dir / "resourceconfig.json").read_text()),
        "inputdataconfig.json": json.loads((config_dir / "inputdataconfig.json").read_text()),
    }
    Path(os.environ["SM_MODEL_DIR"], "summary.json").write_text(json.dumps(summary))
    Path(os.environ["SM_OUTPUT_DATA_DIR"], "report.txt").write_text("done")
    print("training finished", flush=True)
    """
)


# -- helpers ------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll until predicate returns something truthy; fail with `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def png_bytes(seed: int, size: int = 32) -> bytes:
    """A random RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def load_inference(model_dir: Path) -> ModuleType:
    """The tiny model's inference.py, imported in the test process."""
    spec = importlib.util.spec_from_file_location(
        f"sm_local_inference_{uuid.uuid4().hex}", model_dir / "code" / "inference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A tar.gz of in-memory files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def list_keys(bucket: str, prefix: str) -> list[str]:
    """Every key under a prefix."""
    keys: list[str] = []
    for page in (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    ):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def capture_records(bucket: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, record) for every line of every capture file under a prefix."""
    s3 = boto3.client("s3")
    records = []
    for key in list_keys(bucket, prefix):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        records += [(key, json.loads(line)) for line in body.splitlines() if line.strip()]
    return records


class SageMakerLocal:
    """A `python -m services.sagemaker_local` process on a free port."""

    def __init__(self, state_dir: Path, port: int, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = state_dir / "sagemaker-local.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait for /_health."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.sagemaker_local", "--port", str(self.port),
                 "--state-dir", str(self.state_dir)],
                cwd=REPO_ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(self._healthy, f"sagemaker-local /_health\n{self.log()}")

    def _healthy(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, f"sagemaker-local exited:\n{self.log()}"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/_health", timeout=1) as response,
        ):
            return response.status == 200
        return False

    def health(self) -> dict[str, Any]:
        """What /_health reports."""
        with urllib.request.urlopen(f"{self.url}/_health", timeout=5) as response:
            return json.loads(response.read())

    def log(self) -> str:
        """The process log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise AssertionError(f"sagemaker-local ignored SIGTERM:\n{self.log()}") from None


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile(local_aws: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The `local` profile, extended with a `services` section that sends SageMaker to us."""
    port = free_port()
    sm_url = f"http://127.0.0.1:{port}"
    env = write_profile(
        tmp_path_factory.mktemp("sm_profile"), local_aws.endpoint_url, sagemaker_endpoint=sm_url
    )
    with selected_profile(env):
        yield {"port": port, "url": sm_url, "env": env}


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a sagemaker-local process (the test session's profile included)."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}


@pytest.fixture(scope="module")
def sagemaker_local(
    profile: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SageMakerLocal]:
    """One sagemaker-local for the module, stopped at the end."""
    service = SageMakerLocal(
        tmp_path_factory.mktemp("sm_state"),
        profile["port"],
        process_env(SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="1"),
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def bucket(local_aws: Any) -> str:
    """A bucket for data, models, artifacts and capture."""
    name = f"sm-local-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def tiny_model(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model as a directory and as s3://.../model.tar.gz."""
    model_dir = tmp_path_factory.mktemp("tiny_model")
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(INFERENCE_PY)
    module = load_inference(model_dir)
    torch.manual_seed(0)
    torch.save(module.TinyNet().state_dict(), model_dir / "model.pth")
    archive = model_dir.parent / f"{model_dir.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir / "model.pth", arcname="model.pth")
        tar.add(model_dir / "code", arcname="code")
    boto3.client("s3").upload_file(str(archive), bucket, "models/tiny/model.tar.gz")
    return {"dir": model_dir, "uri": f"s3://{bucket}/models/tiny/model.tar.gz", "module": module}


@pytest.fixture(scope="module")
def train_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source directory holding the tiny training script."""
    source = tmp_path_factory.mktemp("train_source")
    (source / "train_tiny.py").write_text(TRAIN_PY)
    return source


def sm() -> Any:
    """A plain SageMaker client (the profile points it at sagemaker-local)."""
    return boto3.client("sagemaker")


def runtime() -> Any:
    """A plain SageMaker Runtime client, with a pool large enough for the concurrency test."""
    return boto3.client("sagemaker-runtime", config=Config(max_pool_connections=64))


def create_endpoint(
    name: str, model_uri: str, capture: dict[str, Any] | None = None, variant: str = "AllTraffic"
) -> None:
    """Model -> endpoint config -> endpoint, all named `name`."""
    client = sm()
    client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": model_uri},
        ExecutionRoleArn=ROLE,
    )
    config: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": variant,
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    }
    if capture:
        config["DataCaptureConfig"] = capture
    client.create_endpoint_config(**config)
    client.create_endpoint(EndpointName=name, EndpointConfigName=name)


def training_job(
    name: str, bucket: str, source: Path, mode: str = "ok", **overrides: Any
) -> dict[str, Any]:
    """CreateTrainingJob arguments for the tiny script."""
    params: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "val_acc", "Regex": r"val_acc=([0-9.]+)"},
                {"Name": "train_loss", "Regex": r"train_loss=([0-9.]+)"},
            ],
        },
        "RoleArn": ROLE,
        "HyperParameters": {
            "epochs": "3",
            "lr": "0.05",
            "mode": mode,
            # As the SageMaker SDK writes them: JSON-encoded strings.
            "sagemaker_program": json.dumps("train_tiny.py"),
            "sagemaker_submit_directory": json.dumps(str(source)),
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/data/train",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/training-output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    params.update(overrides)
    return params


@pytest.fixture(scope="module")
def training_data(bucket: str) -> None:
    """Two tiny files under s3://bucket/data/train/."""
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="data/train/a/1.txt", Body=b"one")
    s3.put_object(Bucket=bucket, Key="data/train/b.txt", Body=b"two")


# -- pure parts ---------------------------------------------------------------------------------
def _tar_with(tmp_path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (("../escape.txt",), "'..'"),
        (("/etc/evil.txt",), "absolute"),
        (("link", tarfile.SYMTYPE, "../../outside"), "points outside"),
        (("link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (("hard", tarfile.LNKTYPE, "../outside"), "points outside"),
        (("dev", tarfile.CHRTYPE), "device"),
        (("fifo", tarfile.FIFOTYPE), "device"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, member: tuple, why: str) -> None:
    archive = _tar_with(tmp_path, lambda tar: tar.addfile(*_member(*member)))
    target = tmp_path / "model"
    with pytest.raises(ModelArchiveError, match=why):
        safe_extract(archive, target)
    assert not any(target.rglob("*")), "nothing may be written from an unsafe archive"
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_keeps_inside_links_and_limits_size(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        tar.addfile(*_member("code/inference.py", data=b"print(1)"))
        tar.addfile(*_member("code/current", tarfile.SYMTYPE, "inference.py"))

    archive = _tar_with(tmp_path, add)
    safe_extract(archive, tmp_path / "ok")
    assert (tmp_path / "ok" / "code" / "current").read_bytes() == b"print(1)"
    with pytest.raises(ModelArchiveError, match="more than 4 bytes"):
        safe_extract(archive, tmp_path / "small", max_bytes=4)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(ModelArchiveError, match=r"valid tar\.gz"):
        safe_extract(garbage, tmp_path / "garbage")


def test_capture_record_and_key_follow_sagemaker() -> None:
    settings = CaptureSettings.from_config(
        {
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": "s3://b/capture/",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        }
    )
    assert settings is not None
    when = datetime(2024, 3, 11, 12, 32, 18, 648123, tzinfo=UTC)
    record = capture_record(
        settings,
        input_content_type="text/csv; charset=utf-8",
        input_data=b"1,2,3",
        output_content_type="application/json",
        output_data=b"[0.5]",
        inference_time=when,
        inference_id="abc",
        event_id="e-1",
    )
    assert record == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "text/csv; charset=utf-8",
                "mode": "INPUT",
                "data": "1,2,3",
                "encoding": "CSV",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": base64.b64encode(b"[0.5]").decode(),
                "encoding": "BASE64",
            },
        },
        "eventMetadata": {
            "eventId": "e-1",
            "inferenceTime": "2024-03-11T12:32:18Z",
            "inferenceId": "abc",
        },
        "eventVersion": "0",
    }
    key = capture_key("capture", "ep", "AllTraffic", when)
    assert re.fullmatch(r"capture/ep/AllTraffic/2024/03/11/12/32-18-648-[0-9a-f-]{36}\.jsonl", key)
    assert (
        CaptureSettings.from_config({"EnableCapture": False, "DestinationS3Uri": "s3://b"}) is None
    )


# -- through boto3 ------------------------------------------------------------------------------
def test_control_plane_errors_are_shaped_as_aws(
    sagemaker_local: SageMakerLocal, tiny_model: dict
) -> None:
    client = sm()
    with pytest.raises(ClientError) as err:
        client.describe_endpoint(EndpointName="no-such-endpoint")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    endpoint_arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/no-such-endpoint"
    assert err.value.response["Error"]["Message"] == f'Could not find endpoint "{endpoint_arn}".'
    with pytest.raises(ClientError) as err:
        client.describe_training_job(TrainingJobName="no-such-job")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as err:
        client.create_model(
            ModelName="bad_name!", PrimaryContainer={"Image": IMAGE}, ExecutionRoleArn=ROLE
        )
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "at 'modelName' failed to satisfy constraint" in err.value.response["Error"]["Message"]

    arn = client.create_model(
        ModelName="Dup-Model", PrimaryContainer={"Image": IMAGE, "ModelDataUrl": tiny_model["uri"]}
    )["ModelArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:model/dup-model"
    with pytest.raises(ClientError) as err:
        client.create_model(ModelName="Dup-Model", PrimaryContainer={"Image": IMAGE})
    assert (
        err.value.response["Error"]["Message"] == f'Cannot create already existing model "{arn}".'
    )
    with pytest.raises(ClientError) as err:
        client.create_endpoint_config(
            EndpointConfigName="cfg-missing-model",
            ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "nope"}],
        )
    assert "Could not find model" in err.value.response["Error"]["Message"]
    assert client.describe_model(ModelName="Dup-Model")["PrimaryContainer"]["Image"] == IMAGE
    assert "Dup-Model" in [m["ModelName"] for m in client.list_models()["Models"]]
    client.delete_model(ModelName="Dup-Model")
    with pytest.raises(ClientError):
        client.describe_model(ModelName="Dup-Model")


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


def test_endpoint_invocations_and_data_capture(
    sagemaker_local: SageMakerLocal, bucket: str, tiny_model: dict[str, Any]
) -> None:
    client, rt = sm(), runtime()
    name = f"ep-{uuid.uuid4().hex[:8]}"
    prefix = f"capture-{name}"
    started = time.monotonic()
    create_endpoint(
        name,
        tiny_model["uri"],
        capture={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{bucket}/{prefix}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        },
    )
    assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    print(f"endpoint InService after {time.monotonic() - started:.2f} s")
    described = client.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    assert described["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == IMAGE
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://{bucket}/{prefix}",
        "KmsKeyId": "",
    }

    image = png_bytes(1)
    before = datetime.now(UTC).replace(microsecond=0)
    answer = rt.invoke_endpoint(
        EndpointName=name,
        Body=image,
        ContentType="image/png",
        Accept="application/json",
        InferenceId="first-inference",
        CustomAttributes="trace=1",
    )
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    output = answer["Body"].read()
    probabilities = json.loads(output)
    module = tiny_model["module"]
    model = module.model_fn(str(tiny_model["dir"]))
    expected = module.predict_fn(module.input_fn(image, "image/png"), model).tolist()
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert sum(probabilities[0]) == pytest.approx(1.0, abs=1e-5)

    records = wait_for(lambda: capture_records(bucket, prefix), "the first capture record")
    assert len(records) == 1
    key, record = records[0]
    inference_time = record["eventMetadata"]["inferenceTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", inference_time)
    when = datetime.strptime(inference_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= when <= datetime.now(UTC)
    assert re.fullmatch(
        rf"{prefix}/{name}/AllTraffic/{when:%Y/%m/%d/%H}/\d\d-\d\d-\d{{3}}-[0-9a-f-]{{36}}\.jsonl",
        key,
    ), key
    assert uuid.UUID(record["eventMetadata"]["eventId"])
    assert record == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "image/png",
                "mode": "INPUT",
                "data": base64.b64encode(image).decode(),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": output.decode(),
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": record["eventMetadata"]["eventId"],
            "inferenceTime": inference_time,
            "inferenceId": "first-inference",
        },
        "eventVersion": "0",
    }

    # 200 concurrent invocations: exactly 200 more records, one per inference id.
    ids = [f"burst-{i}" for i in range(200)]

    def invoke(inference_id: str) -> str:
        response = rt.invoke_endpoint(
            EndpointName=name, Body=png_bytes(hash(inference_id) % 1000), ContentType="image/png",
            Accept="application/json", InferenceId=inference_id,
        )  # fmt: skip
        return str(response["InvokedProductionVariant"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert set(pool.map(invoke, ids)) == {"AllTraffic"}
    records = wait_for(
        lambda: (r := capture_records(bucket, prefix)) and len(r) >= 201 and r,
        "201 capture records",
    )
    assert len(records) == 201
    assert {r["eventMetadata"]["inferenceId"] for _, r in records} == {"first-inference", *ids}
    assert len({r["eventMetadata"]["eventId"] for _, r in records}) == 201

    # Garbage bytes: the container's 400 comes back as a 424 ModelError.
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName=name, Body=b"\x00garbage", ContentType="image/png")
    response = err.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "cannot decode the image" in response["OriginalMessage"]
    assert response["LogStreamArn"].endswith(f"log-group:/aws/sagemaker/Endpoints/{name}")
    assert "Received client error (400) from primary" in response["Error"]["Message"]

    # Above InvokeEndpoint's limit: AWS's front door answers a bare 413.
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(
            EndpointName=name, Body=b"\x00" * (MAX_PAYLOAD + 1), ContentType="image/png"
        )
    assert err.value.response["Error"]["Code"] == "413"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")["Body"].read()

    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName="no-such-endpoint", Body=image, ContentType="image/png")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["Error"]["Message"] == (
        f"Endpoint no-such-endpoint of account {ACCOUNT} not found."
    )
    # Neither failure was captured; the last success was.
    wait_for(lambda: len(capture_records(bucket, prefix)) == 202, "the 202nd record")

    # UpdateEndpoint: Updating, then the new config serves and the old server is gone.
    old_pid = sagemaker_local.health()["endpoints"][name]["variants"]["AllTraffic"]["pid"]
    blue = {"VariantName": "Blue", "ModelName": name, "InstanceType": "ml.m5.large"}
    client.create_endpoint_config(EndpointConfigName=f"{name}-blue", ProductionVariants=[blue])
    client.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-blue")
    assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating"
    assert rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")["Body"].read()
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    described = client.describe_endpoint(EndpointName=name)
    assert described["EndpointConfigName"] == f"{name}-blue"
    assert "DataCaptureConfig" not in described
    answer = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
    assert answer["InvokedProductionVariant"] == "Blue"
    wait_for(lambda: not pid_alive(old_pid), "the old model server to stop")

    client.delete_endpoint(EndpointName=name)
    client.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)
    assert name not in [e["EndpointName"] for e in client.list_endpoints()["Endpoints"]]
    assert len(capture_records(bucket, prefix)) == 203


def test_bad_model_archives_fail_the_endpoint(sagemaker_local: SageMakerLocal, bucket: str) -> None:
    client = sm()
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="models/corrupt/model.tar.gz", Body=os.urandom(4096))
    evil = tar_gz({"code/inference.py": b"", "../escaped.txt": b"owned"})
    s3.put_object(Bucket=bucket, Key="models/evil/model.tar.gz", Body=evil)
    cases = {
        f"corrupt-{uuid.uuid4().hex[:6]}": ("corrupt", "valid tar.gz archive"),
        f"evil-{uuid.uuid4().hex[:6]}": ("evil", "'..' component"),
    }
    for name, (folder, _) in cases.items():
        create_endpoint(name, f"s3://{bucket}/models/{folder}/model.tar.gz")
    for name, (_, reason) in cases.items():
        with pytest.raises(WaiterError, match="Failed"):
            client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        endpoint = client.describe_endpoint(EndpointName=name)
        assert endpoint["EndpointStatus"] == "Failed"
        assert reason in endpoint["FailureReason"]
        assert "Failed to extract model data archive" in endpoint["FailureReason"]
    state = sagemaker_local.state_dir
    assert not list(state.rglob("escaped.txt")) and not (state.parent / "escaped.txt").exists()


def test_restart_keeps_endpoints_and_loses_no_capture(
    profile: dict[str, Any],
    sagemaker_local: SageMakerLocal,
    bucket: str,
    tiny_model: dict[str, Any],
    train_script: Path,
    training_data: None,
    tmp_path: Path,
) -> None:
    # The module's service shares the profile's port: stop it, run our own, start it again.
    sagemaker_local.stop()
    service = SageMakerLocal(
        tmp_path / "state",
        profile["port"],
        # Capture would wait 5 minutes: only the shutdown flush can write the record in time.
        process_env(SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="300"),
    )
    try:
        service.start()
        client, rt = sm(), runtime()
        name = f"ep-restart-{uuid.uuid4().hex[:6]}"
        prefix = f"capture-{name}"
        create_endpoint(
            name,
            tiny_model["uri"],
            capture={
                "InitialSamplingPercentage": 100,
                "DestinationS3Uri": f"s3://{bucket}/{prefix}",
                "CaptureOptions": [{"CaptureMode": "Input"}],
            },
        )
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        arn = client.describe_endpoint(EndpointName=name)["EndpointArn"]
        image = png_bytes(7)
        first = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
        expected = json.loads(first["Body"].read())
        job = f"train-cut-{uuid.uuid4().hex[:6]}"
        client.create_training_job(**training_job(job, bucket, train_script, mode="sleep"))
        job_pid = wait_for(lambda: service.health()["trainingJobs"][job]["pid"], "the job's pid")
        server_pid = service.health()["endpoints"][name]["variants"]["AllTraffic"]["pid"]

        # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert service.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in service.log()
        assert not pid_alive(server_pid) and not pid_alive(job_pid), "orphans after SIGTERM"
        records = capture_records(bucket, prefix)
        assert len(records) == 1, "the shutdown flush must write the buffered record"
        assert (
            records[0][1]["captureData"]["endpointInput"]["data"]
            == base64.b64encode(image).decode()
        )

        started = time.monotonic()
        service.start()
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        print(f"endpoint back InService {time.monotonic() - started:.2f} s after restart")
        assert client.describe_endpoint(EndpointName=name)["EndpointArn"] == arn
        again = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
        assert json.loads(again["Body"].read()) == expected
        interrupted = client.describe_training_job(TrainingJobName=job)
        assert interrupted["TrainingJobStatus"] == "Failed"
        assert "shut down while the job was running" in interrupted["FailureReason"]

        # A hard kill leaves nothing running either (children die with their parent), and the
        # job it cut short is Failed after the next start.
        killed_job = f"train-killed-{uuid.uuid4().hex[:6]}"
        client.create_training_job(**training_job(killed_job, bucket, train_script, mode="sleep"))
        job_pid = wait_for(
            lambda: service.health()["trainingJobs"][killed_job]["pid"], "the job's pid"
        )
        server_pid = service.health()["endpoints"][name]["variants"]["AllTraffic"]["pid"]
        service.stop(signal.SIGKILL)
        wait_for(lambda: not pid_alive(server_pid), "the model server to die with its parent", 15)
        wait_for(lambda: not pid_alive(job_pid), "the training job to die with its parent", 15)
        service.start()
        job = client.describe_training_job(TrainingJobName=killed_job)
        assert job["TrainingJobStatus"] == "Failed"
        assert "stopped while the job was running" in job["FailureReason"]
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    finally:
        service.stop()
        sagemaker_local.start()
