"""The real deploy in tests: a small one on the embedded stack, its executions, its test images.

On "AWS" (moto in the test process, `tests/conftest.py`'s `fake_aws`), `aws_deploy` runs the
deploy's AWS configuration with the image push replaced by `RecordedPush`; `deploy_cli` runs the
deploy command itself, as a user does, against a stack's profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scones.deploy import Deployer, DeployOptions, DeployResult
from scones.deploy.deployer import STEPS, Step
from scones.settings import REPO_ROOT, Settings
from scones.testing import run_execution

# Small enough for a test (a few minutes on two cores), large enough to train past the bar.
SMALL_DEPLOY = DeployOptions(rows_train=10_000, rows_test=2_000, waiter_delay_s=1)
EXECUTION_TIMEOUT_S = 180.0
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
# The AWS configuration (the image pushed to ECR), small data.
AWS_DEPLOY = DeployOptions(
    push_image=True,
    rows_train=400,
    rows_test=100,
    training_image=TRAINING_IMAGE,
    waiter_delay_s=1,
)


def deploy(
    settings: Settings, options: DeployOptions = SMALL_DEPLOY, lines: list[str] | None = None
) -> DeployResult:
    """Deploy; its lines go to `lines` and are printed when it fails (pytest shows them)."""
    echoed: list[str] = [] if lines is None else lines
    try:
        return Deployer(settings, options, echo=echoed.append).deploy()
    except Exception:
        print("\n".join(echoed))
        raise


def deploy_cli(
    args: Sequence[str],
    profile_env: dict[str, str],
    state_dir: Path,
    timeout_s: float,
    **knobs: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m scripts.deploy ARGS` in a subprocess, its output captured (not checked).

    It is configured only by the stack's profile (`profile_env`), the state folder and `knobs`
    (SCONES_* variables): none of the caller's AWS_*, SCONES_* or BACKEND variables leak in.
    Training's accuracy gate is off: these runs check the plumbing, and one epoch on a few dozen
    images may stay at 0.5.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SCONES_", "BACKEND"))}
    env.update(profile_env, SCONES_STATE_DIR=str(state_dir), SCONES_MIN_VAL_ACCURACY="0", **knobs)
    command = [sys.executable, "-m", "scripts.deploy", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def execute(result: DeployResult, key: str) -> dict[str, Any]:
    """One execution of the deployed state machine on the image `key` of its bucket, waited for."""
    import boto3

    return run_execution(
        boto3.client("stepfunctions"),
        result.state_machine_arn,
        {"s3_bucket": result.bucket, "s3_key": key},
        name=f"run-{uuid.uuid4().hex[:12]}",
        timeout_s=EXECUTION_TIMEOUT_S,
    )


def manifest_keys(result: DeployResult, split: str = "test") -> list[str]:
    """The S3 keys of a split's images, in the order of its manifest."""
    import boto3

    manifest = f"{result.data_prefix}/{split}/manifest.jsonl"
    body = boto3.client("s3").get_object(Bucket=result.bucket, Key=manifest)["Body"].read()
    entries = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    return [f"{result.data_prefix}/{split}/{entry['key']}" for entry in entries]


class RecordedPush:
    """Stands in for docker build + push: records the call, registers the image in ECR."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, image_uri: str, context: Path) -> None:
        import boto3

        self.calls.append((image_uri, context))
        repository, tag = image_uri.split("/", 1)[1].rsplit(":", 1)
        media_type = "application/vnd.docker.distribution.manifest.v2+json"
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:" + "0" * 64,
                "size": 1,
            },
            "layers": [],
        }
        boto3.client("ecr").put_image(
            repositoryName=repository,
            imageManifest=json.dumps(manifest),
            imageManifestMediaType=media_type,
            imageTag=tag,
        )


def aws_deploy(
    state_dir: Path,
    push: RecordedPush,
    bucket: str,
    steps: tuple[Step, ...] = STEPS,
) -> tuple[DeployResult, list[str]]:
    """The deploy's AWS configuration into `bucket`; its result and its lines.

    moto's state outlives a test: a test that must start afresh names its own bucket.
    """
    settings = Settings(state_dir=state_dir, bucket=bucket)
    lines: list[str] = []
    deployer = Deployer(settings, AWS_DEPLOY, image_pusher=push, echo=lines.append)
    return deployer.deploy(steps), lines
