"""The harness of sagemaker-local's tests: a real process, tiny models and scripts, clients.

The real process runs on a free port next to the `local_aws` emulator; the clients find it through
the profile's `services` section (never `endpoint_url` in code). Models and training scripts are
tiny ones written by the tests. Test modules import the fixtures below by name.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import subprocess
import tarfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.config import Config

from scones.stack import start_service, wait_for_health
from scones.testing_models import import_file, tiny_inference_py, write_tiny_model
from scones.testing_models import png_bytes as png_bytes  # re-exported for the test modules
from services.local_aws.profile import write_profile
from tests.conftest import free_port, selected_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 90.0
ACCOUNT = "123456789012"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest"
# The training image chooses the executor: the PyTorch framework image runs the user's script.
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-local-test"
WAIT = {"Delay": 1, "MaxAttempts": 120}
MAX_PAYLOAD = 6_291_456

INFERENCE_PY = tiny_inference_py(
    """
    def model_fn(model_dir):
        torch.set_num_threads(1)
        return build_model(model_dir)


    def input_fn(body, content_type):
        return decode_image(body)


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


def load_inference(model_dir: Path) -> ModuleType:
    """The tiny model's inference.py, imported in the test process."""
    return import_file(model_dir / "code" / "inference.py")


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
        """Start (in a process group of its own) and wait for /_health."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--state-dir", str(self.state_dir)]
        self.process = start_service("services.sagemaker_local", args, self.log_path, self.env)
        wait_for_health(f"{self.url}/_health", self.process, self.log_path, DEADLINE_S)

    def __enter__(self) -> SageMakerLocal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> dict[str, Any]:
        """What /_health reports."""
        with urllib.request.urlopen(f"{self.url}/_health", timeout=5) as response:
            return json.loads(response.read())

    def server(self, endpoint: str, variant: str = "AllTraffic") -> dict[str, Any]:
        """What /_health reports of one variant's model server (pid, port, ...)."""
        served: dict[str, Any] = self.health()["endpoints"][endpoint]["variants"][variant]
        return served

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
    state_dir = tmp_path_factory.mktemp("sm_state")
    env = process_env(SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="1", SAGEMAKER_LOCAL_STOP_GRACE_S="2")
    with SageMakerLocal(state_dir, profile["port"], env) as service:
        yield service


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
    module = write_tiny_model(model_dir, INFERENCE_PY)
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


def input_capture(bucket: str, prefix: str) -> dict[str, Any]:
    """A DataCaptureConfig capturing every request's input under s3://bucket/prefix."""
    return {
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://{bucket}/{prefix}",
        "CaptureOptions": [{"CaptureMode": "Input"}],
    }


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


def endpoint_in_service(name: str, model_uri: str, **settings: Any) -> None:
    """`create_endpoint`, then wait until the endpoint is InService."""
    create_endpoint(name, model_uri, **settings)
    sm().get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


def serving_endpoint(prefix: str, model_uri: str) -> str:
    """A new endpoint `<prefix>-<random>` serving `model_uri`, InService; its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    endpoint_in_service(name, model_uri)
    return name


def training_job(
    name: str, bucket: str, source: Path, mode: str = "ok", **overrides: Any
) -> dict[str, Any]:
    """CreateTrainingJob arguments for the tiny script."""
    params: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": TRAINING_IMAGE,
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


def control(port: int, target: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """A raw JSON 1.1 control-plane call: (status, parsed body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/",
            body=body,
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"SageMaker.{target}",
                **(headers or {}),
            },
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def no_retry_runtime() -> Any:
    """A runtime client that shows every error (botocore retries 503s by itself otherwise)."""
    return boto3.client("sagemaker-runtime", config=Config(retries={"max_attempts": 1}))
