"""The deploy's functions step (scones.deploy.functions) on the real emulator and on a fake AWS.

The emulator keeps a new function Pending for a while, as AWS does (here 2 s, so that a deploy
that did not wait would be caught): the deploy returns only once every function is Active, and
sets Lambda's own JSON logging.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from scones.deploy import Deployer, DeployOptions, DeployResult, functions, iam, images, storage
from scones.settings import Settings
from scones.testing import LocalAws, running_local_aws
from scones.testing_deploy import TRAINING_IMAGE
from scones.workflow_functions import WORKFLOW_FUNCTIONS

STEPS = (storage.ensure_bucket, images.ensure_images, iam.ensure_roles, functions.ensure_functions)


@pytest.fixture(scope="module")
def slow_to_activate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    pending = {"LOCAL_AWS_LAMBDA_PENDING_S": "2"}
    with running_local_aws(tmp_path_factory.mktemp("pending"), environment=pending) as emulator:
        yield emulator


def _deploy(prefix: str, tmp_path: Path, lines: list[str]) -> object:
    settings = Settings(state_dir=tmp_path, bucket=f"{prefix}-bucket", name_prefix=prefix)
    options = DeployOptions(training_image=TRAINING_IMAGE, waiter_delay_s=1)
    return Deployer(settings, options, echo=lines.append).deploy(STEPS)


def test_functions_are_active_with_json_logs_when_the_deploy_returns(
    slow_to_activate: LocalAws, tmp_path: Path
) -> None:
    prefix = f"fn{uuid.uuid4().hex[:6]}"
    lines: list[str] = []
    _deploy(prefix, tmp_path, lines)
    lam = boto3.client("lambda")
    for function in WORKFLOW_FUNCTIONS:
        config = lam.get_function_configuration(FunctionName=function.name(prefix))
        assert config["State"] == "Active", (function.folder, config.get("StateReason"))
        assert config["LoggingConfig"]["LogFormat"] == "JSON"
        assert config["Handler"] == "app.handler"
        assert (config["Timeout"], config["MemorySize"]) == (function.timeout_s, function.memory_mb)
        # Invocable at once: no ResourceConflictException from a Pending function.
        answer = lam.invoke(FunctionName=function.name(prefix), Payload=b"{}")
        assert answer["StatusCode"] == 200
    # A second run changes nothing: the JSON logging setting reads back as it was set.
    again: list[str] = []
    _deploy(prefix, tmp_path, again)
    assert [line for line in again if "lambda function" in line] == [
        f"  = lambda function    {f.name(prefix)}" for f in WORKFLOW_FUNCTIONS
    ], "\n".join(again)


def test_function_environments_come_from_the_configuration(aws_deployed: DeployResult) -> None:
    lam = boto3.client("lambda")
    classify = lam.get_function_configuration(FunctionName="scones-classify-image")
    assert classify["Environment"]["Variables"] == {"ENDPOINT_NAME": "scones-image-classifier"}
    filter_fn = lam.get_function_configuration(FunctionName="scones-filter-inferences")
    assert filter_fn["Environment"]["Variables"] == {"THRESHOLD": "0.93"}
