"""The deploy's functions step with provisioned concurrency, on the real emulator.

Each workflow function gets a published version behind its `live` alias, and the alias's
ProvisionedConcurrencyConfig initialises environments before any invocation: the first
invocation through the alias runs in one of them (no Init Duration), a second deploy changes
nothing, and new code publishes a version, moves the alias and provisions that version.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.deploy import Deployer, DeployError, DeployOptions, functions, iam, images, storage
from scones.deploy.context import DeployResult
from scones.settings import Settings
from scones.testing import LocalAws, running_local_aws
from scones.workflow_functions import WORKFLOW_FUNCTIONS

TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
STEPS = (storage.ensure_bucket, images.ensure_images, iam.ensure_roles, functions.ensure_functions)
FILTER = next(f for f in WORKFLOW_FUNCTIONS if f.folder == "filter_inferences")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    with running_local_aws(tmp_path_factory.mktemp("provisioned")) as running:
        yield running


def _deploy(
    prefix: str, state_dir: Path, provisioned: str, lines: list[str], **settings_: Any
) -> DeployResult:
    settings = Settings(
        state_dir=state_dir,
        bucket=f"{prefix}-bucket",
        name_prefix=prefix,
        provisioned_concurrency=provisioned,
        **settings_,
    )
    options = DeployOptions(training_image=TRAINING_IMAGE, waiter_delay_s=1)
    return Deployer(settings, options, echo=lines.append).deploy(STEPS)


def _health(emulator: LocalAws) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{emulator.endpoint_url}/_local_aws/health") as answer:
        return dict(json.loads(answer.read()))


def _invoke_filter(arn: str) -> tuple[dict[str, Any], str]:
    event = {"body": {"inferences": [0.99, 0.01]}}
    answer = boto3.client("lambda").invoke(
        FunctionName=arn, Payload=json.dumps(event).encode(), LogType="Tail"
    )
    assert "FunctionError" not in answer, answer["Payload"].read()
    return answer, base64.b64decode(answer["LogResult"]).decode()


def test_the_deploy_provisions_environments_behind_the_live_alias(
    emulator: LocalAws, tmp_path: Path
) -> None:
    prefix = f"pc{uuid.uuid4().hex[:6]}"
    workers_before = _health(emulator)["lambda_workers"]
    lines: list[str] = []
    result = _deploy(prefix, tmp_path, "2", lines)
    lam = boto3.client("lambda")
    for function in WORKFLOW_FUNCTIONS:
        name = function.name(prefix)
        arn = result.functions[function.suffix]
        assert arn.endswith(f":function:{name}:live"), arn  # what the state machine invokes
        alias = lam.get_alias(FunctionName=name, Name="live")
        assert alias["FunctionVersion"] == "1"
        config = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="live")
        assert config["Status"] == "READY", config
        assert config["AllocatedProvisionedConcurrentExecutions"] == 2
    # Initialised before any invocation: two environments per function are already running.
    assert _health(emulator)["lambda_workers"] - workers_before == 2 * len(WORKFLOW_FUNCTIONS)
    answer, log = _invoke_filter(result.functions[FILTER.suffix])
    assert answer["ExecutedVersion"] == "1"
    assert "initDurationMs" not in log and "Init Duration" not in log, log

    # Nothing changed: nothing published, moved or provisioned again.
    again: list[str] = []
    second = _deploy(prefix, tmp_path, "2", again)
    alias_lines = [line for line in again if "lambda alias" in line]
    assert alias_lines == [
        f"  = lambda alias       {f.name(prefix)}:live" for f in WORKFLOW_FUNCTIONS
    ], "\n".join(again)
    assert second.functions == result.functions


def test_new_code_publishes_moves_the_alias_and_provisions_it(
    emulator: LocalAws, tmp_path: Path
) -> None:
    prefix = f"pc{uuid.uuid4().hex[:6]}"
    result = _deploy(prefix, tmp_path, "1", [])
    lam = boto3.client("lambda")
    name = FILTER.name(prefix)
    lines: list[str] = []
    _deploy(prefix, tmp_path, "1", lines, threshold=0.5)  # a new configuration of one function
    assert lam.get_alias(FunctionName=name, Name="live")["FunctionVersion"] == "2"
    assert any("alias 1 -> 2" in line for line in lines), "\n".join(lines)
    config = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="live")
    assert (config["Status"], config["AllocatedProvisionedConcurrentExecutions"]) == ("READY", 1)
    answer, log = _invoke_filter(result.functions[FILTER.suffix])
    assert answer["ExecutedVersion"] == "2"
    assert "initDurationMs" not in log, log

    # 0 removes the config (on AWS: no more billing for it); the alias stays.
    _deploy(prefix, tmp_path, "0", [], threshold=0.5)
    with pytest.raises(lam.exceptions.ProvisionedConcurrencyConfigNotFoundException):
        lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="live")


def test_auto_provisions_on_the_local_profile_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from scones.deploy.context import DeployContext

    def resolved(value: str) -> int:
        ctx = DeployContext(
            settings=Settings(provisioned_concurrency=value),
            options=DeployOptions(),
            image_pusher=lambda uri, path: None,
        )
        return functions.provisioned_concurrency(ctx)

    config = tmp_path / "aws-config"
    config.write_text("[profile local]\nregion = us-east-1\n[profile yours]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "local")
    assert resolved("auto") == functions.LOCAL_PROVISIONED
    monkeypatch.setenv("AWS_PROFILE", "yours")
    assert resolved("auto") == 0
    assert resolved("3") == 3
    for bad in ("-1", "many"):
        with pytest.raises(DeployError, match="SCONES_PROVISIONED_CONCURRENCY"):
            resolved(bad)


def test_old_versions_are_pruned_to_the_newest_three(emulator: LocalAws, tmp_path: Path) -> None:
    prefix = f"pv{uuid.uuid4().hex[:6]}"
    name = FILTER.name(prefix)
    lines: list[str] = []
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):  # each a new configuration: a new version
        lines.clear()
        _deploy(prefix, tmp_path, "0", lines, threshold=threshold)
    lam = boto3.client("lambda")
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]]
    assert versions == ["$LATEST", "3", "4", "5"]
    assert lam.get_alias(FunctionName=name, Name="live")["FunctionVersion"] == "5"
    assert any("alias 4 -> 5" in line and "deleted old version 2" in line for line in lines), (
        "\n".join(lines)
    )
    # The other functions did not change: their one version stays.
    other = next(f for f in WORKFLOW_FUNCTIONS if f is not FILTER).name(prefix)
    assert [
        v["Version"] for v in lam.list_versions_by_function(FunctionName=other)["Versions"]
    ] == [
        "$LATEST",
        "1",
    ]
