"""Shared by the benchmarks that compare two emulators side by side (IAM enforcement on/off)."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from scones.stack import stop_process_group
from scones.testing import LocalAws, start_local_aws

Deployed = TypeVar("Deployed")


def latency_summary(samples: list[float]) -> dict[str, float]:
    """Median and p95 of latencies in milliseconds."""
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
    }


def enforced_vs_not(
    deploy: Callable[[LocalAws], Deployed],
    measure: Callable[[LocalAws, Deployed, int], list[float]],
    count: int,
    rounds: int = 4,
) -> dict[str, Any]:
    """`measure` on an emulator enforcing IAM and on one that does not, in interleaved rounds.

    Interleaved, so that drift in the machine's load hits both sides alike.
    """
    with tempfile.TemporaryDirectory() as tmp:
        on = start_local_aws(Path(tmp) / "on")
        off = start_local_aws(Path(tmp) / "off", ["--no-iam-enforcement"])
        try:
            samples: dict[str, list[float]] = {"on": [], "off": []}
            deployed = {"on": deploy(on), "off": deploy(off)}
            for _ in range(rounds):
                for name, aws in (("on", on), ("off", off)):
                    samples[name] += measure(aws, deployed[name], count // rounds)
        finally:
            stop_process_group(on.process)
            stop_process_group(off.process)
    enforced, not_enforced = latency_summary(samples["on"]), latency_summary(samples["off"])
    return {
        "enforced": enforced,
        "not_enforced": not_enforced,
        "median_ratio": round(enforced["median_ms"] / not_enforced["median_ms"], 3),
    }
