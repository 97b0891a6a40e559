"""Test cases for the workflow: draw images from the test manifest, run them, collect outcomes.

`generate_cases` draws N images (seeded) from `<prefix>/test/manifest.jsonl`, each with its true
label; `run_cases` starts one Step Functions execution per case, at most `in_flight` at a time,
follows them to their ends with one shared poll (`scones.execution_watch`: one ListExecutions
per tick, one DescribeExecution per execution) and collects each one's status, error,
prediction, confidence and latency;
`write_outcomes` writes `outcomes.csv` and `outcomes.json` (read by `scones.monitoring`).

    python -m scones.testcases --state-machine-arn ARN --bucket B --prefix P \
        [-n 50] [--seed 0] [--in-flight 16] [--out DIR]

Exit status: 0 when every execution succeeded or ended in the expected low-confidence failure,
1 otherwise (the table names the others).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from tqdm import tqdm

from scones.execution_watch import ExecutionWatch, WatchClosed

MANIFEST_NAME = "manifest.jsonl"
DEFAULT_CASES = 50
DEFAULT_IN_FLIGHT = 16
DEFAULT_TIMEOUT_S = 600.0
# The Fail state the workflow ends in when the filter refuses an inference: expected, not a fault.
LOW_CONFIDENCE_ERROR = "LowConfidenceInference"
# Step Functions execution names: 1-80 characters from this set.
EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


class ManifestError(ValueError):
    """The test manifest is missing, empty or has a line without a key or label."""


@dataclass(frozen=True)
class ManifestEntry:
    """One image of the test split: its S3 key and true label."""

    key: str
    label_index: int
    label_name: str


@dataclass(frozen=True)
class TestCase:
    """One execution input to run, with the label the workflow should predict."""

    case: int
    s3_bucket: str
    s3_key: str
    true_label: str
    true_label_index: int

    __test__ = False  # not a pytest test class

    def execution_input(self) -> dict[str, str]:
        """The state machine's input for this case."""
        return {"s3_bucket": self.s3_bucket, "s3_key": self.s3_key}


@dataclass
class RunOutcome:
    """What one execution did: status, error, prediction and latencies."""

    case: int
    execution_name: str
    execution_arn: str
    s3_bucket: str
    s3_key: str
    true_label: str
    true_label_index: int
    status: str
    error: str | None = None
    cause: str | None = None
    predicted_label: str | None = None
    confidence: float | None = None
    passed: bool = False
    correct: bool | None = None
    start_date: str | None = None
    stop_date: str | None = None
    latency_s: float | None = None
    wall_s: float | None = None

    @property
    def expected(self) -> bool:
        """Whether the execution ended as the workflow intends: passed or filtered out."""
        return self.status == "SUCCEEDED" or self.error == LOW_CONFIDENCE_ERROR


OUTCOME_FIELDS = [f.name for f in fields(RunOutcome)]


# --- generation -----------------------------------------------------------------------------


def manifest_key(prefix: str) -> str:
    """The S3 key of the test split's manifest under the data prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}/test/{MANIFEST_NAME}" if prefix else f"test/{MANIFEST_NAME}"


def parse_manifest_line(line: str, prefix: str) -> ManifestEntry:
    """One manifest line as an entry, its key made absolute.

    The ETL writes `{"key", "label", "label_name", "fine_label", "coarse_label"}` with `key`
    relative to the split folder and `label` the index in the class subset; a key that already
    starts with `<prefix>/test/` is taken as it is.
    """
    row = json.loads(line)
    key = row.get("key", row.get("s3_key"))
    name = row.get("label_name")
    index = row.get("label_index", row.get("label"))
    if not isinstance(key, str) or not key or not isinstance(name, str) or not name:
        raise ManifestError(f"manifest line without a key and label name: {line[:200]}")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ManifestError(f"manifest line without an integer label index: {line[:200]}")
    test_prefix = manifest_key(prefix).rsplit("/", 1)[0] + "/"
    if not key.startswith(test_prefix):
        key = test_prefix + key.lstrip("/")
    return ManifestEntry(key, index, name)


def read_manifest(bucket: str, prefix: str, s3: Any = None) -> list[ManifestEntry]:
    """Every entry of `s3://bucket/<prefix>/test/manifest.jsonl`."""
    s3 = s3 or boto3.client("s3")
    key = manifest_key(prefix)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except s3.exceptions.NoSuchKey as error:
        raise ManifestError(
            f"no test manifest at s3://{bucket}/{key}: run the ETL first"
        ) from error
    entries = [parse_manifest_line(line, prefix) for line in body.splitlines() if line.strip()]
    if not entries:
        raise ManifestError(f"the test manifest s3://{bucket}/{key} is empty")
    return entries


def generate_cases(
    manifest: Sequence[ManifestEntry], bucket: str, n: int = DEFAULT_CASES, seed: int = 0
) -> list[TestCase]:
    """N cases drawn from the manifest with `seed`: distinct images while there are enough."""
    if n < 1:
        raise ValueError(f"the number of cases must be at least 1, got {n}")
    if not manifest:
        raise ManifestError("the manifest has no entries")
    rng = random.Random(seed)
    # Sorted first, so the draw depends on the manifest's content, not on its line order.
    pool = sorted(manifest, key=lambda e: e.key)
    drawn = rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)
    return [TestCase(i, bucket, e.key, e.label_name, e.label_index) for i, e in enumerate(drawn)]


def label_names(manifest: Iterable[ManifestEntry]) -> dict[int, str]:
    """The label name of every label index in the manifest."""
    return {e.label_index: e.label_name for e in manifest}


def new_run_id() -> str:
    """A run id for execution names: UTC time and random hex, unique across runs."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def execution_name(run_id: str, case: TestCase) -> str:
    """The execution's name (names are unique per state machine, so the run id is in it)."""
    name = f"tc-{run_id}-{case.case:04d}"
    if not EXECUTION_NAME.fullmatch(name):
        raise ValueError(f"not a valid execution name: {name!r}")
    return name


# --- running --------------------------------------------------------------------------------


def prediction_in_state(document: str | None) -> tuple[str | None, float | None]:
    """`(label, max(inferences))` from a state's JSON input/output, when it carries them."""
    if not document:
        return None, None
    try:
        state = json.loads(document)
    except ValueError:
        return None, None
    body = state.get("body", state) if isinstance(state, dict) else None
    if not isinstance(body, dict):
        return None, None
    inferences = body.get("inferences")
    if not isinstance(inferences, list) or not inferences:
        return None, None
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in inferences):
        return None, None
    label = body.get("label")
    return (str(label) if label is not None else None), float(max(inferences))


def prediction_from_history(sfn: Any, execution_arn: str) -> tuple[str | None, float | None]:
    """The last prediction any state passed on, from the execution's event history."""
    found: tuple[str | None, float | None] = (None, None)
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for event in page["events"]:
            for detail_name in ("stateExitedEventDetails", "stateEnteredEventDetails"):
                details = event.get(detail_name) or {}
                document = details.get("output", details.get("input"))
                label, confidence = prediction_in_state(document)
                if confidence is not None:
                    found = (label, confidence)
    return found


def named_label(label: str | None, names: dict[int, str]) -> str | None:
    """A class-index label (the model gave no name) as its class name from the manifest."""
    if label is not None and label.isdigit() and int(label) in names:
        return names[int(label)]
    return label


class _Stopped(Exception):
    """The run was stopped (another case failed hard); this case was abandoned."""


def run_case(
    sfn: Any,
    watch: ExecutionWatch,
    case: TestCase,
    name: str,
    names: dict[int, str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    stop: threading.Event | None = None,
) -> RunOutcome:
    """Start one execution, follow it to its end, and describe what it did."""
    if stop is not None and stop.is_set():
        raise _Stopped(name)
    started = time.monotonic()
    arn = sfn.start_execution(
        stateMachineArn=watch.state_machine_arn,
        name=name,
        input=json.dumps(case.execution_input()),
    )["executionArn"]
    try:
        described = watch.follow(arn, timeout_s)
    except WatchClosed:
        raise _Stopped(name) from None
    wall_s = time.monotonic() - started
    status = described["status"]
    outcome = RunOutcome(
        case=case.case,
        execution_name=name,
        execution_arn=arn,
        s3_bucket=case.s3_bucket,
        s3_key=case.s3_key,
        true_label=case.true_label,
        true_label_index=case.true_label_index,
        status=status,
        error=described.get("error") or ("ClientPollTimeout" if status == "RUNNING" else None),
        cause=described.get("cause"),
        passed=status == "SUCCEEDED",
        wall_s=round(wall_s, 6),
    )
    start, stop_date = described.get("startDate"), described.get("stopDate")
    if start is not None:
        outcome.start_date = start.astimezone(UTC).isoformat(timespec="microseconds")
    if start is not None and stop_date is not None:
        outcome.stop_date = stop_date.astimezone(UTC).isoformat(timespec="microseconds")
        outcome.latency_s = round((stop_date - start).total_seconds(), 6)
    label, confidence = prediction_in_state(described.get("output"))
    if confidence is None and status != "RUNNING":
        # A filtered-out (or failed) execution has no output: its prediction is in the history.
        label, confidence = prediction_from_history(sfn, arn)
    outcome.predicted_label = named_label(label, names)
    outcome.confidence = confidence
    if outcome.predicted_label is not None:
        outcome.correct = outcome.predicted_label == case.true_label
    return outcome


def stepfunctions_client(in_flight: int) -> Any:
    """A Step Functions client whose connection pool fits the in-flight executions."""
    config = Config(
        max_pool_connections=max(10, in_flight + 2), retries={"mode": "adaptive", "max_attempts": 8}
    )
    return boto3.client("stepfunctions", config=config)


def run_cases(
    state_machine_arn: str,
    cases: Sequence[TestCase],
    *,
    in_flight: int = DEFAULT_IN_FLIGHT,
    names: dict[int, str] | None = None,
    run_id: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    sfn: Any = None,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run every case as an execution, at most `in_flight` at once; outcomes in case order."""
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    sfn = sfn or stepfunctions_client(in_flight)
    run_id = run_id or new_run_id()
    names = names or {}
    stop = threading.Event()
    outcomes: list[RunOutcome] = []
    counts: Counter[str] = Counter()
    bar = tqdm(total=len(cases), desc="executions", unit="exec", disable=not progress)
    watch = ExecutionWatch(sfn, state_machine_arn)
    with watch, ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="execution") as pool:
        pending: set[Future[RunOutcome]] = {
            pool.submit(
                run_case,
                sfn,
                watch,
                c,
                execution_name(run_id, c),
                names,
                timeout_s,
                stop,
            )
            for c in cases
        }
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    outcome = future.result()
                    outcomes.append(outcome)
                    counts["passed" if outcome.passed else outcome.error or outcome.status] += 1
                    if on_outcome:
                        on_outcome(outcome)
                    bar.update(1)
                    bar.set_postfix(dict(counts), refresh=False)
        except BaseException:
            # A client-side failure (no permission, no such state machine, ...) is not a test
            # outcome: stop the run instead of repeating it for every case.
            stop.set()
            for future in pending:
                future.cancel()
            watch.close()  # the cases still followed end as abandoned
            raise
        finally:
            bar.close()
    return sorted(outcomes, key=lambda o: o.case)


# --- reporting ------------------------------------------------------------------------------


def run_summary(outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """Counts, accuracy and latency percentiles of a run."""
    classified = [o for o in outcomes if o.correct is not None]
    latencies = sorted(o.latency_s for o in outcomes if o.latency_s is not None)
    walls = sorted(o.wall_s for o in outcomes if o.wall_s is not None)
    return {
        "executions": len(outcomes),
        "succeeded": sum(o.passed for o in outcomes),
        "filtered_out": sum(o.error == LOW_CONFIDENCE_ERROR for o in outcomes),
        "unexpected": sum(not o.expected for o in outcomes),
        "errors": dict(Counter(o.error for o in outcomes if o.error)),
        "classified": len(classified),
        "accuracy": (sum(bool(o.correct) for o in classified) / len(classified))
        if classified
        else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "wall_p50_s": percentile(walls, 50),
        "wall_p99_s": percentile(walls, 99),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, as numpy's default), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_table(outcomes: Sequence[RunOutcome]) -> str:
    """The outcomes as a fixed-width table for the terminal."""
    header = ("#", "key", "true", "predicted", "conf", "status", "error", "latency", "wall")
    rows = [
        (
            str(o.case),
            o.s3_key.rsplit("/", 1)[-1][:28],
            o.true_label[:16],
            (o.predicted_label or "-")[:16],
            f"{o.confidence:.3f}" if o.confidence is not None else "-",
            o.status,
            o.error or "",
            f"{o.latency_s:.2f}s" if o.latency_s is not None else "-",
            f"{o.wall_s:.2f}s" if o.wall_s is not None else "-",
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_summary(summary: dict[str, Any]) -> str:
    """The run's summary in a few lines."""

    def seconds(value: float | None) -> str:
        return f"{value:.3f}s" if value is not None else "-"

    accuracy = summary["accuracy"]
    return "\n".join(
        [
            f"executions {summary['executions']}: {summary['succeeded']} passed, "
            f"{summary['filtered_out']} filtered out (low confidence), "
            f"{summary['unexpected']} unexpected",
            "accuracy on classified runs: "
            + (f"{accuracy:.1%} of {summary['classified']}" if accuracy is not None else "-"),
            f"latency p50 {seconds(summary['latency_p50_s'])}, "
            f"p99 {seconds(summary['latency_p99_s'])} "
            f"(client wall p50 {seconds(summary['wall_p50_s'])}, "
            f"p99 {seconds(summary['wall_p99_s'])})",
        ]
    )


def write_outcomes(
    outcomes: Sequence[RunOutcome], out_dir: Path, run: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write `outcomes.csv` and `outcomes.json` (with the run's parameters and summary)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "outcomes.csv", out_dir / "outcomes.json"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTCOME_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(o) for o in outcomes)
    document = {
        "run": run or {},
        "summary": run_summary(outcomes),
        "outcomes": [asdict(o) for o in outcomes],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def load_outcomes(path: Path) -> list[RunOutcome]:
    """The outcomes of `outcomes.json` (a document with `outcomes`, or a bare list)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = document["outcomes"] if isinstance(document, dict) else document
    return [RunOutcome(**{k: v for k, v in row.items() if k in OUTCOME_FIELDS}) for row in rows]


def run_test_cases(
    state_machine_arn: str,
    bucket: str,
    prefix: str,
    *,
    n: int = DEFAULT_CASES,
    seed: int = 0,
    in_flight: int = DEFAULT_IN_FLIGHT,
    out_dir: Path = Path("outcomes"),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
) -> tuple[list[RunOutcome], Path]:
    """Generate, run and write the test cases; returns the outcomes and `outcomes.json`."""
    manifest = read_manifest(bucket, prefix)
    cases = generate_cases(manifest, bucket, n, seed)
    run_id = new_run_id()
    started = datetime.now(UTC)
    outcomes = run_cases(
        state_machine_arn,
        cases,
        in_flight=in_flight,
        names=label_names(manifest),
        run_id=run_id,
        timeout_s=timeout_s,
        progress=progress,
    )
    run = {
        "run_id": run_id,
        "state_machine_arn": state_machine_arn,
        "bucket": bucket,
        "prefix": prefix,
        "n": n,
        "seed": seed,
        "in_flight": in_flight,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    _, json_path = write_outcomes(outcomes, Path(out_dir), run)
    return outcomes, json_path


def main(argv: list[str] | None = None) -> int:
    """CLI: run the test cases, print the table and summary, write the outcome files."""
    parser = argparse.ArgumentParser(
        prog="python -m scones.testcases", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--state-machine-arn", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True, help="data prefix (holds test/manifest.jsonl)")
    parser.add_argument("-n", type=int, default=DEFAULT_CASES, help="number of test cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per execution")
    parser.add_argument("--out", type=Path, default=Path("outcomes"), help="output folder")
    args = parser.parse_args(argv)
    try:
        outcomes, json_path = run_test_cases(
            args.state_machine_arn,
            args.bucket,
            args.prefix,
            n=args.n,
            seed=args.seed,
            in_flight=args.in_flight,
            out_dir=args.out,
            timeout_s=args.timeout,
        )
    except ManifestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(outcomes))
    print()
    print(format_summary(run_summary(outcomes)))
    print(f"outcomes: {json_path} and {json_path.with_suffix('.csv')}")
    unexpected = [o for o in outcomes if not o.expected]
    if unexpected:
        names = ", ".join(f"{o.execution_name} ({o.error or o.status})" for o in unexpected[:5])
        print(f"error: {len(unexpected)} executions ended unexpectedly: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
