"""Test-case generation from the S3 manifest, and outcomes of real executions in the emulator.

The state machine here is a tiny stand-in with Pass/Choice/Fail states that ends the way the real
workflow ends (same output shape, same Fail names); the end-to-end test runs the real one.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones import testcases
from scones.deploy.iam import trust
from scones.settings import REPO_ROOT
from tests.conftest import LocalAws

PREFIX = "cifar100"
CLASSES = ("bicycle", "motorcycle")


def manifest_rows() -> list[dict[str, Any]]:
    """A test manifest as the ETL writes it: 20 images of two classes (fine ids 8 and 48)."""
    rows = []
    for i in range(20):
        label = i % 2
        name = CLASSES[label]
        # Names steer the stand-in workflow: "hard" images end in the low-confidence failure,
        # "odd" ones are misclassified, "idx" ones get a class index instead of a name.
        kind = "hard" if i % 5 == 0 else "odd" if i % 7 == 0 else "idx" if i == 3 else "ok"
        rows.append(
            {
                "key": f"{name}_{kind}_{i:05d}.png",
                "label": label,
                "label_name": name,
                "fine_label": (8, 48)[label],
                "coarse_label": 18,
            }
        )
    return rows


def body(label: str, inferences: list[float]) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "body": {
            "s3_bucket.$": "$.s3_bucket",
            "s3_key.$": "$.s3_key",
            "inferences": inferences,
            "label": label,
        },
    }


def classify(label: str, inferences: list[float], next_state: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Pass", "Parameters": body(label, inferences)}
    state.update({"Next": next_state} if next_state else {"End": True})
    return state


# Mimics statemachine/image_classification.asl.json's endings: success with
# {"statusCode", "body": {s3_bucket, s3_key, inferences, label}}, LowConfidenceInference with the
# classified body in its input, and another named failure before classification.
STAND_IN = {
    "StartAt": "Route",
    "States": {
        "Route": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.s3_key", "StringMatches": "*/missing_*", "Next": "ImageNotFound"},
                {"Variable": "$.s3_key", "StringMatches": "*/slow_*", "Next": "Slow"},
                {"Variable": "$.s3_key", "StringMatches": "*_hard_*", "Next": "ClassifyUnsure"},
                {"Variable": "$.s3_key", "StringMatches": "*_odd_*", "Next": "ClassifyWrong"},
                {"Variable": "$.s3_key", "StringMatches": "*_idx_*", "Next": "ClassifyIndex"},
                {"Variable": "$.s3_key", "StringMatches": "*/bicycle_*", "Next": "ClassifyBicycle"},
            ],
            "Default": "ClassifyMotorcycle",
        },
        "Slow": {"Type": "Wait", "Seconds": 1, "Next": "ClassifyBicycle"},
        "ClassifyBicycle": classify("bicycle", [0.97, 0.03], None),
        "ClassifyMotorcycle": classify("motorcycle", [0.04, 0.96], None),
        "ClassifyWrong": classify("flatfish", [0.95, 0.05], None),
        "ClassifyIndex": classify("1", [0.01, 0.99], None),
        "ClassifyUnsure": classify("bicycle", [0.61, 0.39], "Filter"),
        "Filter": {
            "Type": "Pass",
            "Result": {"Error": "ThresholdConfidenceNotMet", "Cause": "below the threshold"},
            "ResultPath": "$.error",
            "Next": "LowConfidenceInference",
        },
        "LowConfidenceInference": {
            "Type": "Fail",
            "Error": "LowConfidenceInference",
            "CausePath": "$.error.Cause",
        },
        "ImageNotFound": {"Type": "Fail", "Error": "ImageNotFound", "Cause": "no such key"},
    },
}


@dataclass
class StandIn:
    bucket: str
    machine_arn: str
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def stand_in(local_aws: LocalAws) -> Iterator[StandIn]:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"scones-testcases-{suffix}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    rows = manifest_rows()
    manifest = "".join(json.dumps(r) + "\n" for r in rows)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/test/manifest.jsonl", Body=manifest.encode())
    role = boto3.client("iam").create_role(
        RoleName=f"scones-testcases-{suffix}",
        AssumeRolePolicyDocument=trust("states.amazonaws.com"),
    )["Role"]["Arn"]
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"stand-in-{suffix}", definition=json.dumps(STAND_IN), roleArn=role
    )["stateMachineArn"]
    yield StandIn(bucket, machine, rows)


# --- generation -----------------------------------------------------------------------------


def test_manifest_is_read_with_every_entry(stand_in: StandIn) -> None:
    manifest = testcases.read_manifest(stand_in.bucket, PREFIX)
    assert [(e.key, e.label_index, e.label_name) for e in manifest] == [
        (f"{PREFIX}/test/{r['key']}", r["label"], r["label_name"]) for r in stand_in.rows
    ]
    assert testcases.label_names(manifest) == {0: "bicycle", 1: "motorcycle"}


def test_generation_is_seeded_reproducible_and_labelled_from_the_manifest(
    stand_in: StandIn,
) -> None:
    manifest = testcases.read_manifest(stand_in.bucket, PREFIX)
    cases = testcases.generate_cases(manifest, stand_in.bucket, n=8, seed=7)
    assert cases == testcases.generate_cases(list(reversed(manifest)), stand_in.bucket, 8, 7)
    assert cases != testcases.generate_cases(manifest, stand_in.bucket, 8, 8)
    assert [c.case for c in cases] == list(range(8))
    assert len({c.s3_key for c in cases}) == 8, "distinct images while the manifest has enough"
    truth = {f"{PREFIX}/test/{r['key']}": (r["label_name"], r["label"]) for r in stand_in.rows}
    for case in cases:
        assert (case.true_label, case.true_label_index) == truth[case.s3_key]
        assert case.execution_input() == {"s3_bucket": stand_in.bucket, "s3_key": case.s3_key}
    more = testcases.generate_cases(manifest, stand_in.bucket, n=50, seed=7)
    assert len(more) == 50 and {c.s3_key for c in more} <= set(truth)


def test_keys_are_made_absolute_under_the_test_prefix() -> None:
    def key_of(key: str, prefix: str) -> str:
        line = json.dumps({"key": key, "label": 0, "label_name": "bicycle"})
        return testcases.parse_manifest_line(line, prefix).key

    assert (
        key_of("a.png", PREFIX) == key_of(f"{PREFIX}/test/a.png", PREFIX) == f"{PREFIX}/test/a.png"
    )
    assert key_of("a.png", f"/{PREFIX}/") == f"{PREFIX}/test/a.png"
    assert key_of("a.png", "") == "test/a.png"


def test_a_missing_manifest_or_bad_line_is_refused(stand_in: StandIn) -> None:
    with pytest.raises(testcases.ManifestError, match="run the ETL"):
        testcases.read_manifest(stand_in.bucket, "nowhere")
    with pytest.raises(testcases.ManifestError, match="label"):
        testcases.parse_manifest_line('{"key": "a.png"}', PREFIX)
    with pytest.raises(ValueError, match="at least 1"):
        testcases.generate_cases(testcases.read_manifest(stand_in.bucket, PREFIX), "b", n=0)


# --- running --------------------------------------------------------------------------------


def expected_ending(key: str, true_label: str) -> tuple[str, str | None, str | None, float | None]:
    """(status, error, predicted label, confidence) the stand-in gives an image key."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("missing_"):
        return "FAILED", "ImageNotFound", None, None
    if "_hard_" in name:
        return "FAILED", "LowConfidenceInference", "bicycle", 0.61
    if "_odd_" in name:
        return "SUCCEEDED", None, "flatfish", 0.95
    if "_idx_" in name:
        return "SUCCEEDED", None, "motorcycle", 0.99
    if true_label == "bicycle":
        return "SUCCEEDED", None, "bicycle", 0.97
    return "SUCCEEDED", None, "motorcycle", 0.96


def test_outcomes_of_real_executions(stand_in: StandIn, tmp_path: Path) -> None:
    manifest = testcases.read_manifest(stand_in.bucket, PREFIX)
    cases = testcases.generate_cases(manifest, stand_in.bucket, n=20, seed=1)
    missing = testcases.TestCase(20, stand_in.bucket, f"{PREFIX}/test/missing_1.png", "bicycle", 0)
    seen: list[testcases.RunOutcome] = []
    outcomes = testcases.run_cases(
        stand_in.machine_arn,
        [*cases, missing],
        in_flight=4,
        names=testcases.label_names(manifest),
        run_id="t1",
        progress=False,
        on_outcome=seen.append,
    )
    assert [o.case for o in outcomes] == list(range(21)) and len(seen) == 21
    sfn = boto3.client("stepfunctions")
    for outcome in outcomes:
        status, error, predicted, confidence = expected_ending(outcome.s3_key, outcome.true_label)
        assert (outcome.status, outcome.error) == (status, error), outcome
        assert (outcome.predicted_label, outcome.confidence) == (predicted, confidence), outcome
        assert outcome.passed == (status == "SUCCEEDED")
        assert outcome.correct == (None if predicted is None else predicted == outcome.true_label)
        assert outcome.execution_name == f"tc-t1-{outcome.case:04d}"
        # The outcome agrees with what Step Functions recorded.
        described = sfn.describe_execution(executionArn=outcome.execution_arn)
        assert json.loads(described["input"]) == {
            "s3_bucket": stand_in.bucket,
            "s3_key": outcome.s3_key,
        }
        latency = (described["stopDate"] - described["startDate"]).total_seconds()
        assert outcome.latency_s == pytest.approx(latency, abs=1e-6)
        assert outcome.wall_s is not None and outcome.wall_s > 0
        events = sfn.get_execution_history(executionArn=outcome.execution_arn)["events"]
        last = events[-1]
        assert last["type"] == f"Execution{status.capitalize()}"
        if error:
            assert last["executionFailedEventDetails"]["error"] == error
    assert {o.error for o in outcomes} == {None, "LowConfidenceInference", "ImageNotFound"}
    summary = testcases.run_summary(outcomes)
    assert summary["unexpected"] == 1 and summary["filtered_out"] == 4
    assert summary["executions"] == 21 and summary["classified"] == 20

    csv_path, json_path = testcases.write_outcomes(outcomes, tmp_path, {"run_id": "t1"})
    assert testcases.load_outcomes(json_path) == outcomes
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["execution_arn"] for r in rows] == [o.execution_arn for o in outcomes]
    assert json.loads(json_path.read_text())["summary"]["filtered_out"] == 4
    table = testcases.format_table(outcomes)
    assert len(table.splitlines()) == 2 + 21 and "LowConfidenceInference" in table


def test_a_client_error_stops_the_run(stand_in: StandIn) -> None:
    manifest = testcases.read_manifest(stand_in.bucket, PREFIX)
    cases = testcases.generate_cases(manifest, stand_in.bucket, n=3, seed=0)
    absent = stand_in.machine_arn.rsplit(":", 1)[0] + ":absent-machine"
    sfn = boto3.client("stepfunctions")
    with pytest.raises(sfn.exceptions.StateMachineDoesNotExist):
        testcases.run_cases(absent, cases, in_flight=2, progress=False)


def test_no_more_than_in_flight_executions_run_at_once(stand_in: StandIn) -> None:
    slow = [
        testcases.TestCase(i, stand_in.bucket, f"{PREFIX}/test/slow_{i}.png", "bicycle", 0)
        for i in range(6)
    ]
    outcomes = testcases.run_cases(stand_in.machine_arn, slow, in_flight=2, progress=False)
    assert all(o.status == "SUCCEEDED" and o.latency_s and o.latency_s >= 1 for o in outcomes)
    spans = [
        (datetime.fromisoformat(str(o.start_date)), datetime.fromisoformat(str(o.stop_date)))
        for o in outcomes
    ]
    overlaps = [sum(s <= start < e for s, e in spans) for start, _ in spans]
    assert max(overlaps) == 2, spans


def run_cli(local_aws: LocalAws, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scones.testcases", *arguments],
        cwd=REPO_ROOT,
        env={**local_aws.env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_the_files_and_prints_the_table(
    local_aws: LocalAws, stand_in: StandIn, tmp_path: Path
) -> None:
    common = ["--state-machine-arn", stand_in.machine_arn, "--bucket", stand_in.bucket]
    done = run_cli(
        local_aws,
        *common,
        "--prefix",
        PREFIX,
        "-n",
        "6",
        "--seed",
        "3",
        "--in-flight",
        "3",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    outcomes = testcases.load_outcomes(tmp_path / "outcomes.json")
    assert len(outcomes) == 6 and (tmp_path / "outcomes.csv").is_file()
    assert "executions: 100%" in done.stderr, "the progress bar"
    assert "executions 6:" in done.stdout and "accuracy on classified runs" in done.stdout
    for outcome in outcomes:
        assert (
            outcome.execution_name in done.stdout
            or outcome.s3_key.rsplit("/", 1)[-1] in done.stdout
        )
    run = json.loads((tmp_path / "outcomes.json").read_text())["run"]
    assert (run["n"], run["seed"], run["in_flight"]) == (6, 3, 3)

    missing = run_cli(local_aws, *common, "--prefix", "nowhere", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "run the ETL" in missing.stderr
