"""The fork server's spare environment and the botocore data it parses before forking."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.local_aws.lambda_forkserver import ForkServer
from services.local_aws.lambda_logs import LoggingConfig
from services.local_aws.lambda_runtime import LambdaRuntime
from services.local_aws.lambda_spec import FunctionSpec

READY_S = 30.0


def make_zip(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", source)
    return buffer.getvalue()


def spec(name: str, source: str, **fields: object) -> FunctionSpec:
    return FunctionSpec(
        name,
        f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        "$LATEST",
        "app.handler",
        "python3.11",
        10.0,
        128,
        tuple(sorted(fields.pop("environment", {}).items())),  # type: ignore[attr-defined]
        f"sha-{name}-{hash(source)}",
        "us-east-1",
        "123456789012",
        **fields,  # type: ignore[arg-type]
    )


def children(pid: int) -> set[int]:
    """The fork server's live children (environments and spares)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + READY_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LambdaRuntime]:
    runtime = LambdaRuntime(tmp_path)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def fork_server(runtime: LambdaRuntime) -> ForkServer:
    server = runtime._forker()
    if server is None:
        pytest.skip("the fork server cannot run here")
    return server


def test_a_new_environment_is_the_spare_forked_ahead_and_a_new_spare_follows(
    runtime: LambdaRuntime,
) -> None:
    server = fork_server(runtime)
    spares = children(server.process.pid)
    assert len(spares) == 1  # forked before the server said it was ready
    source = "import os\ndef handler(e, c):\n    return os.getpid()\n"
    outcome = runtime.invoke(spec("spare", source), lambda: make_zip(source), b"{}")
    pid = json.loads(outcome.payload)
    assert {pid} == spares  # the environment is the spare itself
    # After answering, the server forks the next cold start's spare.
    wait_for(lambda: len(children(server.process.pid)) == 2, "a new spare")
    assert pid in children(server.process.pid)


def test_an_environment_from_the_spare_has_its_functions_settings(
    runtime: LambdaRuntime, tmp_path: Path
) -> None:
    source = (
        "import logging, os\n"
        "def handler(e, c):\n"
        "    logging.getLogger('app').debug('hidden below WARN')\n"
        "    logging.getLogger('app').warning('shown')\n"
        "    return {k: os.environ.get(k) for k in ('AWS_LAMBDA_FUNCTION_NAME', 'COLOUR')}\n"
    )
    logging = LoggingConfig.from_api(
        {"LogFormat": "JSON", "ApplicationLogLevel": "WARN"}, "settings"
    )
    function = spec("settings", source, environment={"COLOUR": "blue"}, logging=logging)
    outcome = runtime.invoke(function, lambda: make_zip(source), b"{}")
    assert json.loads(outcome.payload) == {"AWS_LAMBDA_FUNCTION_NAME": "settings", "COLOUR": "blue"}
    records = [json.loads(line) for line in outcome.log_text.splitlines() if '"message"' in line]
    messages = [r["message"] for r in records if r.get("level") in ("DEBUG", "WARNING")]
    # The JSON format and the WARN level are this function's, not the spare's defaults.
    assert messages == ["shown"], outcome.log_text


def test_botocore_data_is_parsed_once_before_the_fork(runtime: LambdaRuntime) -> None:
    source = (
        "import botocore.session\n"
        "def handler(e, c):\n"
        "    loader = botocore.session.Session().get_component('data_loader')\n"
        "    return sorted({k[1] for k in loader._cache if k[0] == 'load_service_model'})\n"
    )
    outcome = runtime.invoke(spec("warm", source), lambda: make_zip(source), b"{}")
    # Already in a new session's memo before this environment built any client.
    assert {"s3", "sts", "sagemaker-runtime"} <= set(json.loads(outcome.payload))

    # A session with its own AWS_DATA_PATH parses its own files, as botocore does.
    own = spec("own-data", source, environment={"AWS_DATA_PATH": "/nonexistent"})
    outcome = runtime.invoke(own, lambda: make_zip(source), b"{}")
    assert json.loads(outcome.payload) == []


def test_clients_built_from_the_shared_data_work(
    runtime: LambdaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "import boto3\n"
        "def handler(e, c):\n"
        "    s3 = boto3.client('s3', region_name='eu-west-1', aws_access_key_id='k',\n"
        "                      aws_secret_access_key='s')\n"
        "    model = s3.meta.service_model\n"
        "    url = s3.generate_presigned_url('get_object', Params={'Bucket': 'b', 'Key': 'k'})\n"
        "    return [model.service_name, 'GetObject' in model.operation_names, url.split('?')[0]]\n"
    )
    outcome = runtime.invoke(spec("client", source), lambda: make_zip(source), b"{}")
    # The same answer as a client of this process, built from files it parsed itself; with
    # no endpoint or profile of an earlier test in its environment (the function has none).
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    here: dict[str, Any] = {}
    exec(source, here)
    assert json.loads(outcome.payload) == here["handler"]({}, None)
    assert json.loads(outcome.payload)[:2] == ["s3", True]
