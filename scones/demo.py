"""`make demo`: the whole seed in one command — up, deploy, test cases, monitoring report.

Offline it uses the synthetic CIFAR-100 archive; set `SCONES_CIFAR_SOURCE` to the official
archive (a path or URL) to use that. Stops at the first failure with a non-zero exit and the
log to read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from scones import monitoring, stack, testcases
from scones.deploy import Deployer, DeployError, DeployOptions, functions, summary
from scones.settings import load


class DemoFailed(RuntimeError):
    """A demo step failed; the message names the step and the log to read."""


def _step(number: int, title: str, started: float) -> None:
    print(f"\n[{number}/4] {title}  (t+{time.monotonic() - started:.0f}s)", flush=True)


def run_demo(cases: int = 50, in_flight: int = 16, out_dir: Path | None = None) -> dict[str, Any]:
    """Run every step; return the summary numbers. Raises DemoFailed at the first failure."""
    settings = load()
    state_dir = settings.state_dir
    out_dir = out_dir or state_dir / "demo"
    started = time.monotonic()

    _step(1, "Start the local stack", started)
    try:
        stack.up(settings)
    except stack.StackError as error:
        raise DemoFailed(f"make up: {error}\n  logs: {state_dir / 'logs'}") from error
    profile = stack.profile_env(settings)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        del os.environ[name]
    os.environ.update(profile)

    _step(2, "Deploy: data, training job, endpoint, Lambdas, state machine", started)
    deployer = Deployer(settings, DeployOptions())
    try:
        # The local profile: each function's `live` alias gets provisioned environments
        # (SCONES_PROVISIONED_CONCURRENCY), so the test cases below start warm, as on AWS.
        provisioned = functions.provisioned_concurrency(deployer.context)
        result = deployer.deploy()
    except (DeployError, ClientError) as error:
        raise DemoFailed(
            f"deploy: {error}\n  logs: {state_dir / 'logs'} (sagemaker_local.log has the training "
            "and model-server output)"
        ) from error
    print(summary(result))

    _step(3, f"Run {cases} test cases ({in_flight} in flight)", started)
    try:
        outcomes, outcomes_path = testcases.run_test_cases(
            result.state_machine_arn,
            result.bucket,
            result.data_prefix,
            n=cases,
            in_flight=in_flight,
            out_dir=out_dir / "runs",
        )
    except (ClientError, testcases.ManifestError) as error:
        raise DemoFailed(f"test cases: {error}") from error
    print(testcases.format_table(outcomes))
    unexpected = [o for o in outcomes if not o.expected]
    if unexpected:
        names = ", ".join(sorted({str(o.error or o.status) for o in unexpected}))
        raise DemoFailed(
            f"{len(unexpected)} of {len(outcomes)} executions failed unexpectedly ({names}); "
            f"outcomes in {outcomes_path}, logs in {state_dir / 'logs'}"
        )

    _step(4, "Monitoring report from the captured data", started)
    invocations = sum(o.confidence is not None for o in outcomes)
    report = monitoring.build_report(
        result.bucket,
        result.capture_uri.split("/", 3)[3]
        if result.capture_uri.count("/") >= 3
        else "data-capture",
        result.endpoint,
        result.threshold,
        out_dir / "report",
        outcomes_path=outcomes_path,
        expect_records=invocations,
        wait_s=60.0,
    )
    numbers = {
        "report": str(report.html_path),
        "executions": len(outcomes),
        "accuracy": report.summary.accuracy,
        "filtered_out_share": report.summary.filtered_out_share,
        "latency_p50_s": report.summary.latency_p50_s,
        "latency_p99_s": report.summary.latency_p99_s,
        "capture_records": report.summary.capture_records,
        "provisioned_per_function": provisioned,
        "wall_s": round(time.monotonic() - started, 1),
    }
    return numbers


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def main(argv: list[str] | None = None, run: Callable[..., dict[str, Any]] = run_demo) -> int:
    """CLI entry point of `make demo`."""
    parser = argparse.ArgumentParser(prog="python -m scones.demo", description=__doc__)
    parser.add_argument(
        "-n", "--cases", type=int, default=load().cases, help="test cases (SCONES_CASES)"
    )
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        numbers = run(cases=args.cases, in_flight=args.in_flight)
    except DemoFailed as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    print("\nDemo complete.")
    for key, value in numbers.items():
        print(f"  {key:<20} {_fmt(value)}")
    print(f"\nOpen the report: {numbers['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
