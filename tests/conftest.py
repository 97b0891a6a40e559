"""Shared fixtures: real local services on free ports, in temporary folders, always stopped.

The harness itself lives in `scones.testing` and `scones.stack` (the benchmarks use it too);
the names below are the ones the test modules import.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from scones.deploy import DeployResult
from scones.settings import REPO_ROOT
from scones.stack import READY_TIMEOUT_S as STARTUP_TIMEOUT_S
from scones.stack import free_port
from scones.stack import stop_process_group as stop_process
from scones.stack import wait_for_health as wait_until_ready
from scones.testing import (
    LocalAws,
    LocalStack,
    reset_boto3,
    running_local_aws,
    selected_profile,
    start_local_aws,
    start_local_stack,
)
from scones.testing_deploy import RecordedPush, aws_deploy
from scones.testing_sagemaker import (
    CAPTURE_ENDPOINT,
    CAPTURE_PREFIX,
    CAPTURE_START,
    CAPTURE_VARIANT,
    Written,
    capture_files,
    capture_line,
)
from services.local_aws.profile import write_profile

# Helpers that test modules import and register as plugins: their asserts are rewritten too.
pytest.register_assert_rewrite("tests.sagemaker_local_harness", "tests.model_server_harness")

__all__ = [
    "REPO_ROOT",
    "STARTUP_TIMEOUT_S",
    "LocalAws",
    "LocalStack",
    "free_port",
    "reset_boto3",
    "running_local_aws",
    "selected_profile",
    "start_local_aws",
    "start_local_stack",
    "stop_process",
    "wait_until_ready",
]


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """A real emulator for the whole session, with the `local` profile selected in os.environ."""
    with running_local_aws(tmp_path_factory.mktemp("local_aws")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The embedded stack for one test module, its profile selected in os.environ."""
    stack = start_local_stack(tmp_path_factory.mktemp("stack"))
    try:
        with selected_profile(stack.env):
            yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def fake_aws_profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's own server in this process as "AWS" (SageMaker too), for the session; its profile.

    moto's state lives in the process, not in the server: one "AWS" for every module that uses it.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # No `services` section: SageMaker too goes to moto, i.e. to "AWS".
    profile = write_profile(
        tmp_path_factory.mktemp("fake_aws"), f"http://{host}:{port}", None, profile="fakeaws"
    )
    try:
        yield profile
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fake_aws(fake_aws_profile: dict[str, str]) -> Iterator[dict[str, str]]:
    """The fake AWS's profile selected in os.environ for one module."""
    with selected_profile(fake_aws_profile):
        yield fake_aws_profile


@dataclass
class AwsDeployed:
    """One deploy of the AWS configuration on the fake AWS: its result and its image pushes."""

    result: DeployResult
    push: RecordedPush
    state_dir: Path


@pytest.fixture(scope="session")
def aws_deploy_once(
    fake_aws_profile: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AwsDeployed:
    """The whole deploy on the fake AWS, once: an endpoint cannot be updated on moto."""
    state_dir = tmp_path_factory.mktemp("aws_deploy")
    push = RecordedPush()
    with selected_profile(fake_aws_profile):
        result, _ = aws_deploy(state_dir, push, "scones-aws-test")
    return AwsDeployed(result, push, state_dir)


@pytest.fixture(scope="module")
def aws_deployed(fake_aws: dict[str, str], aws_deploy_once: AwsDeployed) -> DeployResult:
    """What the deploy on the fake AWS created, its profile selected for the module."""
    return aws_deploy_once.result


CAPTURE_FILES = 1010  # more than one ListObjectsV2 page


@dataclass
class CaptureInS3:
    """A data capture as SageMaker leaves it, in a bucket of the session's emulator."""

    bucket: str
    written: list[Written]
    keys: list[str]


@pytest.fixture(scope="session")
def sagemaker_capture(local_aws: LocalAws) -> CaptureInS3:
    """CAPTURE_FILES capture files over several hours, and neighbours no reader may read."""
    bucket = f"scones-capture-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", config=Config(max_pool_connections=20))
    s3.create_bucket(Bucket=bucket)
    files, written = capture_files(CAPTURE_PREFIX, CAPTURE_FILES)
    # Another endpoint whose name extends ours, and a non-capture object.
    other, _ = capture_line(0, CAPTURE_START, random.Random(0))
    prefix = f"{CAPTURE_PREFIX}/{CAPTURE_ENDPOINT}"
    files[f"{prefix}-2/{CAPTURE_VARIANT}/2026/03/04/19/00-00-000-x.jsonl"] = other.encode()
    files[f"{prefix}/{CAPTURE_VARIANT}/README.txt"] = b"not capture"
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), files.items())
        )
    return CaptureInS3(bucket, written, sorted(files))
