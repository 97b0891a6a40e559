"""The state machine: its ASL, placeholder substitution, the rendered graph, and real executions.

The executions run in the embedded emulator (moto's Step Functions interpreter, the three zips in
real Lambda workers, S3); the endpoint is the wire-level stand-in from test_lambdas.
"""

from __future__ import annotations

import ast
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from PIL import Image

from lambdas import package
from scones import render_graph
from scones.testing import create_workflow
from scones.testing_functions import load_app
from scones.testing_sagemaker import MODEL_ANSWER, SageMakerRuntimeStandIn
from statemachine import definition
from tests.conftest import LocalAws

REPO_ROOT = Path(__file__).resolve().parent.parent
GRAPH_PNG = REPO_ROOT / "docs" / "stepfunctions_graph.png"
STATE_PAYLOAD_LIMIT = 262_144
LAMBDA_TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
# Errors that say the input or configuration is wrong: retrying cannot help.
PERMANENT = {
    "InvalidEvent",
    "ImageNotFound",
    "NotAnImage",
    "ImageTooLarge",
    "EndpointError",
    "ConfigurationError",
    "ThresholdConfidenceNotMet",
}
FAKE_ARNS = {
    name: f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
    for function, name in definition.FUNCTION_PLACEHOLDERS.items()
}


@pytest.fixture(scope="module")
def asl() -> dict[str, Any]:
    return json.loads(definition.load_template())


def lambda_tasks(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in asl["States"].items() if s.get("Resource", "").endswith("lambda:invoke")
    }


def function_of(state: dict[str, Any]) -> str:
    placeholder = state["Parameters"]["FunctionName"][2:-1]
    return {v: k for k, v in definition.FUNCTION_PLACEHOLDERS.items()}[placeholder]


# --- the ASL file -----------------------------------------------------------------------------


def test_asl_is_json_with_a_complete_graph(asl: dict[str, Any]) -> None:
    states = asl["States"]
    assert asl["StartAt"] == "SerializeImageData"
    targets = {asl["StartAt"]}
    for state in states.values():
        targets |= {state["Next"]} if "Next" in state else set()
        targets |= {c["Next"] for c in state.get("Catch", [])}
    assert targets == set(states), "every state is reached, and every target exists"
    assert render_graph.main_path(asl) == [
        "SerializeImageData",
        "ClassifyImage",
        "FilterInferences",
    ]
    assert states["FilterInferences"]["End"] is True


def test_every_lambda_task_passes_the_payload_and_selects_the_result(asl: dict[str, Any]) -> None:
    tasks = lambda_tasks(asl)
    assert {function_of(s) for s in tasks.values()} == set(package.FUNCTIONS)
    for state in tasks.values():
        assert state["Resource"] == "arn:aws:states:::lambda:invoke"
        assert state["Parameters"]["Payload.$"] == "$"
        selector = state["ResultSelector"]
        assert selector["statusCode.$"] == "$.Payload.statusCode"
        assert "body.$" in selector or "body" in selector


def test_every_lambda_task_retries_transient_errors_with_backoff_and_jitter(
    asl: dict[str, Any],
) -> None:
    for name, state in lambda_tasks(asl).items():
        retried = {e for r in state["Retry"] for e in r["ErrorEquals"]}
        assert retried >= LAMBDA_TRANSIENT, name
        assert not retried & (PERMANENT | {"States.ALL"}), name
        for retrier in state["Retry"]:
            assert retrier["BackoffRate"] > 1 and retrier["MaxAttempts"] >= 2
            assert retrier["JitterStrategy"] == "FULL" and retrier["MaxDelaySeconds"] > 0
    classify = {e for r in asl["States"]["ClassifyImage"]["Retry"] for e in r["ErrorEquals"]}
    assert "EndpointUnavailable" in classify


def test_low_confidence_is_caught_into_a_named_failure(asl: dict[str, Any]) -> None:
    catchers = asl["States"]["FilterInferences"]["Catch"]
    caught = [c for c in catchers if c["ErrorEquals"] == ["ThresholdConfidenceNotMet"]]
    assert len(caught) == 1
    failure = asl["States"][caught[0]["Next"]]
    assert failure["Type"] == "Fail"
    assert failure["Error"] == "LowConfidenceInference"
    assert failure["CausePath"] == "$.error.Cause" and caught[0]["ResultPath"] == "$.error"


def named_errors(function: str) -> set[str]:
    """The exception classes an app.py defines (their names are the errorTypes it raises)."""
    tree = ast.parse((package.LAMBDAS_DIR / function / "app.py").read_text())
    bases = {"Exception", "ValueError", "LookupError", "RuntimeError"}
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id in bases for b in node.bases)
    }


def test_every_named_lambda_error_ends_in_its_own_failure(asl: dict[str, Any]) -> None:
    for state in lambda_tasks(asl).values():
        raised = named_errors(function_of(state))
        assert "InvalidEvent" in raised
        catchers = {e: c["Next"] for c in state["Catch"] for e in c["ErrorEquals"]}
        assert set(catchers) == raised, function_of(state)
        for error, target in catchers.items():
            failure = asl["States"][target]
            assert failure["Type"] == "Fail"
            expected = "LowConfidenceInference" if error == "ThresholdConfidenceNotMet" else error
            assert failure["Error"] == expected


def test_rendered_definition_is_accepted_by_the_asl_parser() -> None:
    AmazonStateLanguageParser.parse(definition.render(FAKE_ARNS))


# --- placeholders -----------------------------------------------------------------------------


def test_every_placeholder_is_substituted_and_nothing_else_changes() -> None:
    template = definition.load_template()
    assert definition.placeholders(template) == set(definition.FUNCTION_PLACEHOLDERS.values())
    rendered = definition.render(FAKE_ARNS)
    assert "${" not in rendered
    restored = rendered
    for name, arn in FAKE_ARNS.items():
        restored = restored.replace(arn, "${" + name + "}")
    assert restored == template
    arns = {f: FAKE_ARNS[p] for f, p in definition.FUNCTION_PLACEHOLDERS.items()}
    assert definition.render_for_functions(arns) == rendered
    tasks = lambda_tasks(json.loads(definition.render(FAKE_ARNS)))
    assert {s["Parameters"]["FunctionName"] for s in tasks.values()} == set(FAKE_ARNS.values())


def test_unknown_missing_and_malformed_placeholders_are_refused() -> None:
    with pytest.raises(definition.PlaceholderError, match="unknown names: \\['Extra'\\]"):
        definition.render({**FAKE_ARNS, "Extra": "x"})
    partial = dict(FAKE_ARNS)
    del partial["ClassifyImageFunctionArn"]
    with pytest.raises(definition.PlaceholderError, match="ClassifyImageFunctionArn"):
        definition.render(partial)
    with pytest.raises(definition.PlaceholderError, match="non-empty"):
        definition.render({**FAKE_ARNS, "ClassifyImageFunctionArn": ""})
    with pytest.raises(definition.PlaceholderError, match="malformed"):
        definition.render({}, template='{"a": "${not closed", "b": "${1st}"}')
    with pytest.raises(definition.PlaceholderError, match="no placeholder"):
        definition.render_for_functions({"train_model": "arn"})


def test_values_are_json_escaped() -> None:
    rendered = definition.render({"X": 'a"b\\c'}, template='{"v": "${X}"}')
    assert json.loads(rendered) == {"v": 'a"b\\c'}


# --- the picture ------------------------------------------------------------------------------


def test_graph_picture_is_regenerated_byte_identically(tmp_path: Path) -> None:
    out = render_graph.render(definition.ASL_PATH, tmp_path / "graph.png")
    assert out.read_bytes() == GRAPH_PNG.read_bytes(), (
        "docs/stepfunctions_graph.png is stale: run `python -m scones.render_graph`"
    )
    assert png_chunk_types(out.read_bytes()) == ["IHDR", "pHYs", "IDAT", "IEND"]


def png_chunk_types(data: bytes) -> list[str]:
    """The PNG's chunk types in order, merging consecutive IDATs (no text, no time)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types: list[str] = []
    offset = 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8].decode("ascii")
        if not (types and types[-1] == kind == "IDAT"):
            types.append(kind)
        offset += 12 + length
    return types


def test_graph_changes_when_the_asl_changes(tmp_path: Path, asl: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(asl))
    changed["States"]["LowConfidenceInference"]["Error"] = "NeedsHumanReview"
    asl_path = tmp_path / "changed.asl.json"
    asl_path.write_text(json.dumps(changed))
    out = render_graph.render(asl_path, tmp_path / "changed.png")
    assert out.read_bytes() != GRAPH_PNG.read_bytes()
    assert render_graph.layout(changed).nodes["LowConfidenceInference"].lines[1] == (
        "Fail · Error NeedsHumanReview"
    )


# --- executions in the embedded emulator ----------------------------------------------------


class Workflow:
    """The three functions and the state machine, deployed to the emulator."""

    def __init__(self, machine_arn: str, bucket: str, endpoint: SageMakerRuntimeStandIn) -> None:
        self.machine_arn = machine_arn
        self.bucket = bucket
        self.endpoint = endpoint
        self.sfn = boto3.client("stepfunctions")
        self.s3 = boto3.client("s3")

    def put(self, data: bytes, suffix: str = ".png") -> str:
        key = f"test/{uuid.uuid4().hex}{suffix}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def run(self, execution_input: dict[str, Any]) -> dict[str, Any]:
        execution = self.sfn.start_execution(
            stateMachineArn=self.machine_arn,
            name=f"run-{uuid.uuid4().hex[:12]}",
            input=json.dumps(execution_input),
        )["executionArn"]
        deadline = time.monotonic() + 60
        while (described := self.sfn.describe_execution(executionArn=execution))[
            "status"
        ] == "RUNNING":
            assert time.monotonic() < deadline, "execution did not finish"
            time.sleep(0.05)
        return described


def png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workflow(local_aws: LocalAws) -> Iterator[Workflow]:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"scones-workflow-{suffix}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    with SageMakerRuntimeStandIn() as endpoint:
        environments = {
            "classify_image": {
                "ENDPOINT_NAME": "scones-workflow-test",
                # Locally only: sends sagemaker-runtime to the stand-in instead of sagemaker-local.
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint.url,
                "AWS_MAX_ATTEMPTS": "1",
            },
        }
        created = create_workflow(suffix, bucket, environments)
        for function in package.FUNCTIONS:
            _, sha = package.build_zip(function)
            assert created.functions[function]["CodeSha256"] == sha
        machine = created.machine_arn
        yield Workflow(machine, bucket, endpoint)


def set_threshold(workflow: Workflow, value: str | None) -> None:
    name = workflow.machine_arn.rsplit("-", 1)[-1]
    variables = {"THRESHOLD": value} if value is not None else {}
    boto3.client("lambda").update_function_configuration(
        FunctionName=f"filter_inferences-{name}", Environment={"Variables": variables}
    )


def test_execution_succeeds_with_inferences_as_floats_and_the_label(workflow: Workflow) -> None:
    workflow.endpoint.answer_json("scones-workflow-test", MODEL_ANSWER)
    image = png()
    key = workflow.put(image)
    for execution_input in (
        {"s3_bucket": workflow.bucket, "s3_key": key},
        {"body": {"image_data": "", "s3_bucket": workflow.bucket, "s3_key": key}},
    ):
        described = workflow.run(execution_input)
        assert described["status"] == "SUCCEEDED", described
        assert json.loads(described["output"]) == {
            "statusCode": 200,
            "body": {
                "s3_bucket": workflow.bucket,
                "s3_key": key,
                "inferences": [0.0125, 0.9875],
                "label": "motorcycle",
            },
        }
        assert workflow.endpoint.requests[-1][1:] == ("image/png", "application/json", image)


def test_largest_image_keeps_every_state_payload_under_256_kib(workflow: Workflow) -> None:
    app = load_app("serialize_image_data")
    workflow.endpoint.answer_json("scones-workflow-test", {"probabilities": [0.01] * 99 + [0.99]})
    header = png()[:16]
    key = workflow.put(header + bytes(app.MAX_IMAGE_BYTES - len(header)))
    described = workflow.run({"s3_bucket": workflow.bucket, "s3_key": key})
    assert described["status"] == "SUCCEEDED", described
    events = workflow.sfn.get_execution_history(executionArn=described["executionArn"])["events"]
    payloads = [
        details.get(field, "")
        for event in events
        for key_name, details in event.items()
        if key_name.endswith("EventDetails") and isinstance(details, dict)
        for field in ("input", "output")
    ]
    largest = max(len(p.encode()) for p in payloads)
    assert 4 * app.MAX_IMAGE_BYTES // 3 < largest < STATE_PAYLOAD_LIMIT


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("missing key", "ImageNotFound"),
        ("text object", "NotAnImage"),
        ("no bucket field", "InvalidEvent"),
        ("too large", "ImageTooLarge"),
    ],
)
def test_bad_inputs_end_in_their_named_failures(workflow: Workflow, case: str, error: str) -> None:
    largest = load_app("serialize_image_data").MAX_IMAGE_BYTES
    execution_input = {
        "missing key": lambda: {"s3_bucket": workflow.bucket, "s3_key": "test/absent.png"},
        "text object": lambda: {
            "s3_bucket": workflow.bucket,
            "s3_key": workflow.put(b"hi", ".txt"),
        },
        "no bucket field": lambda: {"s3_key": "test/a.png"},
        "too large": lambda: {
            "s3_bucket": workflow.bucket,
            "s3_key": workflow.put(png()[:16] + bytes(largest)),
        },
    }[case]()
    described = workflow.run(execution_input)
    assert (described["status"], described["error"]) == ("FAILED", error)
    assert json.loads(described["cause"])["errorType"] == error


def test_model_error_ends_in_endpoint_error(workflow: Workflow) -> None:
    workflow.endpoint.answer_error(
        "scones-workflow-test",
        424,
        "ModelError",
        "Received server error (500) from primary",
        OriginalStatusCode=500,
        OriginalMessage="model crashed",
    )
    described = workflow.run({"s3_bucket": workflow.bucket, "s3_key": workflow.put(png())})
    assert (described["status"], described["error"]) == ("FAILED", "EndpointError")
    assert "model crashed" in json.loads(described["cause"])["errorMessage"]


def test_threshold_one_ends_in_low_confidence_and_a_bad_threshold_in_configuration_error(
    workflow: Workflow,
) -> None:
    workflow.endpoint.answer_json("scones-workflow-test", MODEL_ANSWER)
    key = workflow.put(png())
    try:
        set_threshold(workflow, "1.0")
        described = workflow.run({"s3_bucket": workflow.bucket, "s3_key": key})
        assert (described["status"], described["error"]) == ("FAILED", "LowConfidenceInference")
        cause = json.loads(described["cause"])
        assert cause["errorType"] == "ThresholdConfidenceNotMet"
        assert "0.987500" in cause["errorMessage"] and "threshold 1.0" in cause["errorMessage"]

        set_threshold(workflow, "93")
        described = workflow.run({"s3_bucket": workflow.bucket, "s3_key": key})
        assert (described["status"], described["error"]) == ("FAILED", "ConfigurationError")
    finally:
        set_threshold(workflow, None)
    assert workflow.run({"s3_bucket": workflow.bucket, "s3_key": key})["status"] == "SUCCEEDED"
