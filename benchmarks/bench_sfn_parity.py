"""Does Step Functions parity (JSONata, time, Express, TestState) slow JSONPath machines down?

Runs the same executions in-process (moto's interpreter, no HTTP) in two child processes:
`moto` (as shipped, plus the speedups' program cache) and `parity` (with
`stepfunctions_parity.install()`); each prints the p50/p90 of a JSONPath machine (Pass, Choice,
Parameters, ResultPath) and, in `parity`, of the same with a workflow variable (Assign, `$seen`)
and of the same machine written in JSONata. Ratios are against `moto` in the same run; modes
alternate over `--rounds` and each figure is the median over rounds.

    python -m benchmarks.bench_sfn_parity [--executions 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

JSONPATH = {
    "StartAt": "Shape",
    "States": {
        "Shape": {"Type": "Pass", "Parameters": {"n.$": "$.n", "tags.$": "$.tags"},
                  "Next": "Pick"},
        "Pick": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericGreaterThan": 5,
                                                "Next": "Big"}], "Default": "Small"},
        "Big": {"Type": "Pass", "Parameters": {"seen.$": "$.n", "n.$": "$.n"},
                "ResultPath": "$.result", "Next": "Done"},
        "Small": {"Type": "Pass", "Next": "Done"},
        "Done": {"Type": "Succeed"},
    },
}  # fmt: skip
JSONATA = {
    "QueryLanguage": "JSONata",
    "StartAt": "Shape",
    "States": {
        "Shape": {"Type": "Pass", "Output": {"n": "{% $states.input.n %}",
                                             "tags": "{% $states.input.tags %}"},
                  "Assign": {"seen": "{% $states.input.n %}"}, "Next": "Pick"},
        "Pick": {"Type": "Choice", "Choices": [{"Condition": "{% $states.input.n > 5 %}",
                                                "Next": "Big"}], "Default": "Small"},
        "Big": {"Type": "Pass", "Output": "{% $merge([$states.input, {'result': {'seen': $seen,"
                                          " 'n': $states.input.n}}]) %}", "Next": "Done"},
        "Small": {"Type": "Pass", "Next": "Done"},
        "Done": {"Type": "Succeed"},
    },
}  # fmt: skip
# The same with a workflow variable (moto as shipped fails it: its evaluator is stubbed out).
JSONPATH_VARIABLES = json.loads(
    json.dumps(JSONPATH)
    .replace('"Next": "Pick"}', '"Assign": {"seen.$": "$.n"}, "Next": "Pick"}')
    .replace('"seen.$": "$.n", "n.$"', '"seen.$": "$seen", "n.$"')
)
INPUT = {"n": 7, "tags": [f"tag-{i}" for i in range(50)], "blob": "x" * 2000}


def measure(mode: str, executions: int) -> dict[str, Any]:
    """In this process: latency of executions started and run to their end."""
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"]["execute_state_machine"] = True
    from services.local_aws import stepfunctions_speedups

    stepfunctions_speedups.install()
    if mode == "parity":
        from services.local_aws import stepfunctions_parity

        stepfunctions_parity.install()
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
    from moto.stepfunctions.responses import get_backend

    backend = get_backend("123456789012", "us-east-1")
    from moto.iam.models import iam_backends

    from scones.deploy.iam import trust

    # CreateStateMachine checks that Step Functions may assume the role (stepfunctions_roles).
    role = (
        iam_backends["123456789012"]["global"]
        .create_role("bench", trust("states.amazonaws.com"), "/", None, "", [], None)
        .arn
    )
    # Run each execution in the calling thread, so the clock sees only the interpreter.
    ExecutionWorker.start = ExecutionWorker._execution_logic  # type: ignore[method-assign]
    figures: dict[str, Any] = {}
    machines: dict[str, Any] = {"jsonpath": JSONPATH}
    if mode == "parity":
        machines |= {"jsonpath+var": JSONPATH_VARIABLES, "jsonata": JSONATA}
    for label, asl in machines.items():
        machine = backend.create_state_machine(f"bench-{label}", json.dumps(asl), role)
        samples = []
        for i in range(executions + 10):
            started = time.perf_counter()
            execution = backend.start_execution(machine.arn, f"e{i}", json.dumps(INPUT))
            status = execution.exec_status.value  # type: ignore[attr-defined]  # the parser's Execution
            assert status == "SUCCEEDED", (execution.error, execution.cause)
            if i >= 10:  # warm-up: first parse, imports
                samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        figures[label] = {
            "p50_ms": round(statistics.median(samples), 3),
            "p90_ms": round(samples[int(len(samples) * 0.9)], 3),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sfn_parity")
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each mode")
    parser.add_argument("--child", choices=("moto", "parity"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.executions)))
        return
    # Modes alternate, and each figure is the median over the rounds: a shared machine's noise
    # hits both modes alike instead of whichever ran second.
    runs: dict[str, list[dict[str, Any]]] = {"moto": [], "parity": []}
    for _ in range(args.rounds):
        for mode in runs:
            command = [sys.executable, "-m", "benchmarks.bench_sfn_parity", "--child", mode,
                       "--executions", str(args.executions)]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(run["jsonpath"]["p50_ms"] for run in runs["moto"])
    for mode, mode_runs in runs.items():
        for label in mode_runs[0]:
            p50 = statistics.median(run[label]["p50_ms"] for run in mode_runs)
            p90 = statistics.median(run[label]["p90_ms"] for run in mode_runs)
            print(f"{mode:7s} {label:12s} p50 {p50:8.3f} ms  p90 {p90:8.3f} ms"
                  f"  x{p50 / base:.2f} of moto jsonpath p50  ({args.rounds} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
