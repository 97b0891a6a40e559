"""End to end on the embedded stack: deploy, executions, test cases, monitoring report.

One real deploy (ETL of a small synthetic archive, a real training job through sagemaker-local,
a real endpoint, the three Lambdas, the state machine) serves every test in this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import WaiterError

from scones import monitoring, testcases
from scones.deploy import Deployer, DeployResult
from scones.settings import Settings
from scones.testing_deploy import SMALL_DEPLOY, deploy, execute, manifest_keys
from scones.workflow_functions import WORKFLOW_FUNCTIONS
from statemachine.definition import load_template
from tests.conftest import LocalStack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # A 0.5 threshold lets every 2-class inference through; tests that need the filter change it.
    return Settings(
        state_dir=tmp_path_factory.mktemp("e2e_state"), threshold=0.5, min_val_accuracy=0.7
    )


@pytest.fixture(scope="module")
def deployed(local_stack: LocalStack, settings: Settings) -> Iterator[DeployResult]:
    yield deploy(settings)


def test_execution_succeeds_with_float_inferences(deployed: DeployResult) -> None:
    key = manifest_keys(deployed)[0]
    execution = execute(deployed, key)
    assert execution["status"] == "SUCCEEDED", execution
    body = json.loads(execution["output"])["body"]
    assert body["s3_key"] == key
    inferences = body["inferences"]
    assert isinstance(inferences, list) and len(inferences) == 2
    assert all(isinstance(p, float) for p in inferences)
    assert abs(sum(inferences) - 1.0) < 1e-4
    assert body["label"] in ("bicycle", "motorcycle")
    assert "image_data" not in body


def test_threshold_one_ends_in_low_confidence(deployed: DeployResult, settings: Settings) -> None:
    strict = Deployer(replace(settings, threshold=1.0), SMALL_DEPLOY, echo=lambda _: None)
    try:
        redeployed = strict.deploy()
        changed = [c.name for c in redeployed.changes if c.action == "update"]
        # The new configuration is published and the state machine's alias moved to it.
        assert changed == ["scones-filter-inferences", "scones-filter-inferences:live"]
        for key in manifest_keys(deployed)[:5]:
            execution = execute(deployed, key)
            if execution["status"] == "SUCCEEDED":  # a softmax that rounded to exactly 1.0
                assert max(json.loads(execution["output"])["body"]["inferences"]) == 1.0
                continue
            assert execution["status"] == "FAILED"
            assert execution["error"] == "LowConfidenceInference"
            assert "ThresholdConfidenceNotMet" in execution["cause"] or execution["cause"]
            return
        pytest.fail("no image ended in LowConfidenceInference at THRESHOLD=1.0")
    finally:
        deploy(settings)


def test_missing_key_and_non_image_end_in_named_errors(deployed: DeployResult) -> None:
    missing = execute(deployed, f"{deployed.data_prefix}/test/nope.png")
    assert (missing["status"], missing["error"]) == ("FAILED", "ImageNotFound")
    text_key = f"{deployed.data_prefix}/test/not-an-image.png"
    boto3.client("s3").put_object(Bucket=deployed.bucket, Key=text_key, Body=b"just some text")
    not_image = execute(deployed, text_key)
    assert (not_image["status"], not_image["error"]) == ("FAILED", "NotAnImage")


def test_deployed_definition_is_the_repository_asl(deployed: DeployResult) -> None:
    definition = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=deployed.state_machine_arn
    )["definition"]
    template = load_template()
    for function in WORKFLOW_FUNCTIONS:
        template = template.replace(
            "${" + function.placeholder + "}", deployed.functions[function.suffix]
        )
    assert "${" not in template
    assert json.loads(definition) == json.loads(template)


def test_second_deploy_changes_nothing(deployed: DeployResult, settings: Settings) -> None:
    lines: list[str] = []
    again = deploy(settings, lines=lines)
    assert not again.changed, "\n".join(lines)
    assert again.state_machine_arn == deployed.state_machine_arn
    assert again.endpoint_config == deployed.endpoint_config


def test_report_from_real_captures(deployed: DeployResult, tmp_path: Path) -> None:
    capture_prefix = deployed.capture_uri.split("/", 3)[3]
    before = monitoring.read_capture(deployed.bucket, capture_prefix, deployed.endpoint)
    outcomes, outcomes_path = testcases.run_test_cases(
        deployed.state_machine_arn,
        deployed.bucket,
        deployed.data_prefix,
        n=12,
        seed=7,
        in_flight=4,
        out_dir=tmp_path / "runs",
        progress=False,
    )
    assert len(outcomes) == 12
    invocations = sum(o.confidence is not None for o in outcomes)
    assert invocations == 12  # every image was classified (some may be filtered afterwards)
    report = monitoring.build_report(
        deployed.bucket,
        capture_prefix,
        deployed.endpoint,
        deployed.threshold,
        tmp_path / "report",
        outcomes_path=outcomes_path,
        expect_records=len(before.records) + invocations,
        wait_s=30.0,
    )
    # Every invocation made by this module left exactly one capture record.
    assert report.summary.capture_records == len(before.records) + invocations
    # The plotted threshold is the deployed filter Lambda's THRESHOLD.
    deployed_threshold = float(
        boto3.client("lambda").get_function_configuration(FunctionName="scones-filter-inferences")[
            "Environment"
        ]["Variables"]["THRESHOLD"]
    )
    plotted = monitoring.threshold_line_of(report.figures["confidence_over_time"])
    assert plotted == deployed_threshold == deployed.threshold
    # The outcome file agrees with the executions' own records.
    sfn = boto3.client("stepfunctions")
    saved = json.loads(outcomes_path.read_text())["outcomes"]
    assert len(saved) == 12
    for outcome in saved:
        described = sfn.describe_execution(executionArn=outcome["execution_arn"])
        assert outcome["status"] == described["status"]
        assert outcome["error"] == described.get("error")
        if described["status"] == "SUCCEEDED":
            body = json.loads(described["output"])["body"]
            assert outcome["predicted_label"] == body["label"]
            assert outcome["confidence"] == pytest.approx(max(body["inferences"]))
    html = report.html_path.read_text()
    assert 'src="http' not in html and "data:image/png;base64," in html


def test_deploy_heals_a_lost_model_and_its_failed_endpoint(
    deployed: DeployResult, settings: Settings
) -> None:
    """Last in the module: the artefact vanishes and the endpoint fails; the deploy heals both."""
    s3, sagemaker = boto3.client("s3"), boto3.client("sagemaker")
    bucket, key = deployed.model_artifact.removeprefix("s3://").split("/", 1)
    s3.delete_object(Bucket=bucket, Key=key)
    # The endpoint starts again without its artefact (as after a lost state folder): Failed.
    wait = {"Delay": 1, "MaxAttempts": 180}
    sagemaker.delete_endpoint(EndpointName=deployed.endpoint)
    sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=deployed.endpoint, WaiterConfig=wait)
    sagemaker.create_endpoint(
        EndpointName=deployed.endpoint, EndpointConfigName=deployed.endpoint_config
    )
    with pytest.raises(WaiterError):
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=deployed.endpoint, WaiterConfig=wait
        )
    assert sagemaker.describe_endpoint(EndpointName=deployed.endpoint)["EndpointStatus"] == "Failed"

    lines: list[str] = []
    healed = deploy(settings, lines=lines)
    changes = {c.resource: c for c in healed.changes}
    assert changes["training job"].action == "heal", "\n".join(lines)
    assert healed.training_job == f"{deployed.training_job}-2"
    assert key in changes["training job"].detail
    assert changes["endpoint"].action == "heal", "\n".join(lines)
    assert "was Failed" in changes["endpoint"].detail
    assert sagemaker.describe_endpoint(EndpointName=healed.endpoint)["EndpointStatus"] == (
        "InService"
    )
    execution = execute(healed, manifest_keys(healed)[0])
    assert execution["status"] == "SUCCEEDED", execution
