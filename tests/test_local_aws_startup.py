"""The emulator's start and stop: health before moto, lazy Step Functions restore, SIGTERM.

No timing is asserted: what is checked is the order of things (the health check answers while
moto is not imported, a restart restores before it answers) and what a stop leaves behind.
"""

from __future__ import annotations

import http.client
import importlib
import json
import signal
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from scones.stack import ProcessIdentity, StackError, stop_process_group
from scones.testing import (
    INVOKE_ANY_FUNCTION,
    LocalAws,
    run_execution,
    service_role,
    start_local_aws,
)
from scones.testing_functions import create_function, invoke
from scones.testing_processes import descendants
from services.local_aws import moto_imports

ECHO = "def handler(event, context):\n    return {'echo': event}\n"


def _health(aws: LocalAws) -> dict[str, Any]:
    with urllib.request.urlopen(f"{aws.endpoint_url}/_local_aws/health", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _descendants(pid: int) -> list[ProcessIdentity]:
    """Every live process below `pid`, by identity (a reused pid is another process)."""
    identities = (ProcessIdentity.of(child) for child in descendants(pid))
    return [identity for identity in identities if identity is not None]


def _sigterm(aws: LocalAws) -> int:
    aws.process.send_signal(signal.SIGTERM)
    return aws.process.wait(timeout=60)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_a_fresh_emulator_answers_its_health_check_before_loading_moto(state_dir: Path) -> None:
    aws = start_local_aws(state_dir)
    try:
        assert _health(aws)["backends_loaded"] is False
        s3 = aws.client("s3")
        assert s3.list_buckets()["Buckets"] == []
        health = _health(aws)
        assert health["backends_loaded"] is True
        assert health["stepfunctions_loaded"] is False  # S3 alone never loads the ASL parser
    finally:
        stop_process_group(aws.process)


def test_preload_loads_moto_in_the_background_without_a_request(state_dir: Path) -> None:
    aws = start_local_aws(state_dir, ["--preload"])  # as `make up` starts it
    try:
        deadline = time.monotonic() + 60
        while not _health(aws)["backends_loaded"]:  # health alone never loads moto
            assert time.monotonic() < deadline, "moto was not preloaded"
            time.sleep(0.05)
        assert aws.client("s3").list_buckets()["Buckets"] == []
    finally:
        stop_process_group(aws.process)


def test_a_connection_opened_before_moto_loaded_is_served_by_moto_s_handler(
    state_dir: Path,
) -> None:
    """moto's handler keeps underscores in S3 metadata names; werkzeug's drops them."""
    aws = start_local_aws(state_dir)
    try:
        url = urllib.parse.urlsplit(aws.endpoint_url)
        connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        try:
            connection.request("GET", "/_local_aws/health")  # handled before moto exists
            answer = connection.getresponse()
            assert json.loads(answer.read())["backends_loaded"] is False
            connection.request("PUT", "/lazy-bucket")  # the same connection loads moto
            assert connection.getresponse().read() is not None
            connection.request(
                "PUT", "/lazy-bucket/key", body=b"x", headers={"x-amz-meta-my_name": "kept"}
            )
            assert connection.getresponse().status == 200
        finally:
            connection.close()
        head = aws.client("s3").head_object(Bucket="lazy-bucket", Key="key")
        assert head["Metadata"] == {"my_name": "kept"}
    finally:
        stop_process_group(aws.process)


def test_sigterm_stops_every_worker_and_a_restart_restores_state_lazily(state_dir: Path) -> None:
    aws = start_local_aws(state_dir)
    try:
        lam, s3, sfn = aws.client("lambda"), aws.client("s3"), aws.client("stepfunctions")
        role = service_role(aws.client("iam"), "startup", [INVOKE_ANY_FUNCTION])
        names = [f"warm-{uuid.uuid4().hex[:6]}" for _ in range(3)]
        for name in names:
            create_function(lam, name, ECHO, role)
            assert invoke(name, {"n": 1}, lam)[1] == {"echo": {"n": 1}}
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="k", Body=b"bytes")
        definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
        machine = sfn.create_state_machine(
            name="kept", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
        workers = _descendants(aws.process.pid)
        assert len(workers) >= len(names)  # one environment per function (+ the fork server)
    except BaseException:
        stop_process_group(aws.process)
        raise
    assert _sigterm(aws) == 0
    assert [w for w in workers if ProcessIdentity.of(w.pid) == w] == []

    again = start_local_aws(state_dir)
    try:
        health = _health(again)
        # Restored before it answered, except Step Functions: that waits for its first request.
        assert health["backends_loaded"] is True
        assert health["stepfunctions_loaded"] is False
        assert again.client("s3").get_object(Bucket="kept", Key="k")["Body"].read() == b"bytes"
        assert invoke(names[0], {"n": 2}, again.client("lambda"))[1] == {"echo": {"n": 2}}
        machines = again.client("stepfunctions").list_state_machines()["stateMachines"]
        assert [m["stateMachineArn"] for m in machines] == [machine]
        health = _health(again)
        assert health["stepfunctions_loaded"] is True
        assert health["restored"]["stepfunctions"] is True
    finally:
        stop_process_group(again.process)


def test_a_stop_before_step_functions_was_restored_keeps_its_state(state_dir: Path) -> None:
    """A restart that never served Step Functions must not write over its unrestored state."""
    aws = start_local_aws(state_dir)
    try:
        role = service_role(aws.client("iam"), "startup", [INVOKE_ANY_FUNCTION])
        definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
        aws.client("stepfunctions").create_state_machine(
            name="survivor", definition=json.dumps(definition), roleArn=role
        )
    finally:
        stop_process_group(aws.process)
    middle = start_local_aws(state_dir)
    try:
        middle.client("iam").create_role(
            RoleName="later", AssumeRolePolicyDocument=json.dumps({"Statement": []})
        )
    finally:
        assert _sigterm(middle) == 0
    last = start_local_aws(state_dir)
    try:
        names = [
            m["name"] for m in last.client("stepfunctions").list_state_machines()["stateMachines"]
        ]
        assert names == ["survivor"]
        assert last.client("iam").get_role(RoleName="later")["Role"]["RoleName"] == "later"
    finally:
        stop_process_group(last.process)


def test_a_restore_that_fails_stops_the_emulator_before_it_answers(state_dir: Path) -> None:
    persist = state_dir / "persist"
    persist.mkdir(parents=True)
    (persist / "iam.pkl").write_bytes(b"not a snapshot")
    with pytest.raises(StackError, match="did not start"):
        start_local_aws(state_dir)


def test_a_deferred_package_init_runs_only_when_its_exports_are_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "heavy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .models import backends\n")
    (package / "models.py").write_text("import sys\nsys.heavy_loaded = True\nbackends = {'a': 1}\n")
    (package / "utils.py").write_text("LIGHT = 'enum'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delattr(sys, "heavy_loaded", raising=False)
    for name in ("heavy_pkg", "heavy_pkg.models", "heavy_pkg.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    assert moto_imports.defer_package_init("heavy_pkg", "heavy_pkg.models")
    assert importlib.import_module("heavy_pkg.utils").LIGHT == "enum"
    assert not hasattr(sys, "heavy_loaded")  # the package's __init__ did not run
    assert importlib.import_module("heavy_pkg").backends == {"a": 1}  # what __init__ exported
    assert sys.heavy_loaded is True  # type: ignore[attr-defined]
    assert not moto_imports.defer_package_init("heavy_pkg", "heavy_pkg.models")  # once


def test_step_functions_run_and_batch_still_answers_with_its_package_deferred(
    state_dir: Path,
) -> None:
    aws = start_local_aws(state_dir)
    try:
        role = service_role(aws.client("iam"), "startup", [INVOKE_ANY_FUNCTION])
        lam, sfn = aws.client("lambda"), aws.client("stepfunctions")
        arn = create_function(lam, "echo", ECHO, role)["FunctionArn"]
        definition = {"StartAt": "Echo", "States": {"Echo": {"Type": "Task", "Resource": arn,
                                                             "End": True}}}  # fmt: skip
        machine = sfn.create_state_machine(
            name="echo", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
        execution = run_execution(sfn, machine, {"n": 3})
        assert execution["status"] == "SUCCEEDED"
        assert json.loads(execution["output"]) == {"echo": {"n": 3}}
        # moto.batch's backends load on their first request, as moto's dispatcher asks for them.
        assert aws.client("batch").describe_job_queues()["jobQueues"] == []
    finally:
        stop_process_group(aws.process)
