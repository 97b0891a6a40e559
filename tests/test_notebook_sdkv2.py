"""The course-style SDK v2 notebook, executed headless against the embedded stack, unchanged.

`examples/course-style/run_notebook.py` runs `starter.ipynb` as on a notebook instance (the
instance record, its metadata file in a private mount namespace, the SDK's config.yaml) in the
SDK v2 environment `.venv-sdkv2`, which this module builds with `make notebook-env` when it is
missing. The notebook makes no STS call: its STS endpoint is hard-coded to
`https://sts.<region>.amazonaws.com`, unreachable here, so a call would fail the cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.settings import REPO_ROOT
from scones.testing import LocalStack

EXAMPLE = REPO_ROOT / "examples" / "course-style"
SDKV2_PYTHON = REPO_ROOT / ".venv-sdkv2" / "bin" / "python"
SDKV2_STAMP = REPO_ROOT / ".venv-sdkv2" / ".installed"


@pytest.fixture(scope="module")
def sdkv2_python() -> Path:
    """The SDK v2 interpreter; `make notebook-env` builds the environment when it is missing."""
    if not SDKV2_STAMP.exists():
        started = time.perf_counter()
        built = subprocess.run(
            ["make", "-s", "notebook-env"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if built.returncode != 0:
            pytest.skip(f"the SDK v2 environment cannot be created here: {built.stderr[-2000:]}")
        print(f"\nmake notebook-env: {time.perf_counter() - started:.1f} s")
    version = subprocess.run(
        [
            str(SDKV2_PYTHON),
            "-c",
            "from importlib.metadata import version; print(version('sagemaker'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("2."), version
    return SDKV2_PYTHON


def _run_notebook_module() -> Any:
    import runpy

    return runpy.run_path(str(EXAMPLE / "run_notebook.py"))


@pytest.fixture(scope="module")
def executed(
    local_stack: LocalStack, sdkv2_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The notebook, executed once; its cells with their outputs."""
    why_not = _run_notebook_module()["namespace_available"]()
    if why_not:
        pytest.skip(f"a notebook instance needs a private mount namespace: {why_not}")
    workdir = tmp_path_factory.mktemp("notebook")
    output = workdir / "executed.ipynb"
    env = {**os.environ, **local_stack.env, "COURSE_EPOCHS": "15"}
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "run_notebook.py"),
            *("--workdir", str(workdir / "nb"), "--output", str(output)),
            *("--python", str(sdkv2_python)),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"\nnotebook wall time {time.perf_counter() - started:.1f} s: {run.stdout.strip()}")
    cells = json.loads(output.read_text())["cells"] if output.exists() else []
    failed = [_text(c) for c in cells if any(o.get("output_type") == "error" for o in _outs(c))]
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}\n{''.join(failed)[-4000:]}"
    for cell in cells:
        seconds = _seconds(cell)
        if seconds > 2:
            print(f"  {seconds:5.1f} s  {''.join(cell['source']).splitlines()[0]}")
    return {"cells": cells}


def _seconds(cell: dict[str, Any]) -> float:
    """A cell's execution time, from the timing nbclient records in its metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    if "shell.execute_reply" not in timing:
        return 0.0
    start, end = (
        datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
        for k in ("iopub.execute_input", "shell.execute_reply")
    )
    return (end - start).total_seconds()


def _outs(cell: dict[str, Any]) -> list[dict[str, Any]]:
    return list(cell.get("outputs", []))


def _text(cell: dict[str, Any]) -> str:
    parts = []
    for out in _outs(cell):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]))
        elif out.get("output_type") == "error":
            parts.append("\n".join(out["traceback"]))
    return "".join(parts)


def _cell(executed: dict[str, Any], source_start: str) -> dict[str, Any]:
    cell = next(c for c in executed["cells"] if "".join(c["source"]).startswith(source_start))
    return dict(cell)


def test_role_and_bucket_come_from_the_notebook_instance_and_the_sdk_config(
    executed: dict[str, Any],
) -> None:
    text = _text(_cell(executed, "import sagemaker"))
    assert "Default Bucket: sagemaker-us-east-1-123456789012" in text
    assert (
        "RoleArn: arn:aws:iam::123456789012:role/AmazonSageMaker-ExecutionRole-scones-course"
        in (text)
    )
    described = boto3.client("sagemaker").describe_notebook_instance(
        NotebookInstanceName="scones-course"
    )
    assert described["RoleArn"].endswith(":role/AmazonSageMaker-ExecutionRole-scones-course")


def test_fit_streams_the_algorithms_metrics(executed: dict[str, Any]) -> None:
    log = _text(_cell(executed, "img_classifier_model.fit(model_inputs)"))
    assert "Epoch[0] Train-accuracy=" in log
    assert "Epoch[3] Validation-accuracy=" in log
    assert "Completed - Training job completed" in log


def test_summary_has_metrics_prediction_and_captured_records(executed: dict[str, Any]) -> None:
    summary_cell = next(c for c in executed["cells"] if "summary" in c["metadata"].get("tags", []))
    summary = json.loads(_text(summary_cell).strip().splitlines()[-1])
    print(f"\nnotebook summary: {summary}")
    assert summary["training_status"] == "Completed"
    assert set(summary["final_metrics"]) >= {"train:accuracy", "validation:accuracy"}
    assert 0.75 <= summary["final_metrics"]["validation:accuracy"] <= 1.0
    prediction = summary["prediction"]
    assert len(prediction) == 2 and abs(sum(prediction) - 1.0) < 1e-4
    # The one invocation was captured and read back through S3Downloader + jsonlines.
    assert summary["capture_files"] >= 1
    assert summary["captured"] == [prediction]
