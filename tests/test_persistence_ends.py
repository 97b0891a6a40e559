"""An execution's end is on disk before any client can see it; snapshots never race moto.

These run moto's own backends in-process (the emulator's backends, without its HTTP server) so
that the moment between "the execution ended" and "its end record is on disk" can be held open
deterministically: what a kill -9 would leave is then read back from the journal itself.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from scones.deploy.iam import trust
from services.local_aws import persistence, persistence_pickle
from services.local_aws.persistence import Persistence
from services.local_aws.persistence_executions import ExecutionJournal

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/states"
PASS_MACHINE = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}
END_EVENTS = {"ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Persistence]:
    """A Persistence on moto's in-process backends; its class patches undone afterwards."""
    from moto.stepfunctions.parser.backend.execution import (
        BaseExecutionWorkerCommunication,
        Execution,
    )
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    for cls, name in (
        (BaseExecutionWorkerCommunication, "terminated"),
        (StepFunctionsParserBackend, "start_execution"),
        (StepFunctionsParserBackend, "stop_execution"),
        (Execution, "to_history_output"),
    ):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    # moto's in-process mock, not a profile an earlier test selected (its endpoint_url would
    # send these clients to a running emulator instead).
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    for variable in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(variable, os.devnull)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        persisted = Persistence(tmp_path / "persist")
        persisted.load()
        persisted.load_stepfunctions()
        # A role Step Functions may assume: the emulator's role check (stepfunctions_roles)
        # refuses any other once an earlier test installed it in this process.
        boto3.client("iam", region_name=REGION).create_role(
            RoleName="states", AssumeRolePolicyDocument=trust("states.amazonaws.com")
        )
        try:
            yield persisted
        finally:
            persisted.close()


class HeldEnds:
    """Holds each end record before it is written, until released: the fsync window, held open."""

    def __init__(self, journal: ExecutionJournal) -> None:
        self.record = journal.record
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, execution: Any) -> None:
        if execution.exec_status.value != "RUNNING":
            self.entered.set()
            assert self.release.wait(timeout=30), "end record never released"
        self.record(execution)


def _on_disk(journal: ExecutionJournal, arn: str) -> Any:
    """The execution as a restart after a kill -9 now would restore it."""
    latest, _ = journal.latest()
    return latest[arn][1]


def _wait_status(sfn: Any, arn: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=arn))["status"] != status:
        assert time.monotonic() < deadline, f"{arn} is {described['status']}, not {status}"
        time.sleep(0.01)
    return dict(described)


def _machine(sfn: Any, definition: dict[str, Any] = PASS_MACHINE) -> str:
    return str(
        sfn.create_state_machine(name="ends", roleArn=ROLE, definition=json.dumps(definition))[
            "stateMachineArn"
        ]
    )


def _held_start(
    store: Persistence, monkeypatch: pytest.MonkeyPatch, definition: dict[str, Any]
) -> tuple[Any, HeldEnds, str, str]:
    """Start an execution whose end record is held; return once it ended in moto."""
    held = HeldEnds(store.executions)
    monkeypatch.setattr(store.executions, "record", held)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = _machine(sfn, definition)
    arn = sfn.start_execution(stateMachineArn=machine, name="held", input="{}")["executionArn"]
    assert held.entered.wait(timeout=30), "the execution never ended"
    return sfn, held, machine, arn


def test_an_end_is_not_visible_until_its_record_is_on_disk(
    store: Persistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn, held, machine, arn = _held_start(store, monkeypatch, PASS_MACHINE)

    # Ended in moto, its end record not yet written: a kill -9 now restores it as lost...
    on_disk = _on_disk(store.executions, arn)
    assert on_disk.error == persistence_pickle.LOST_BY_RESTART
    # ...so no client may see it ended: describe, list and history all say RUNNING.
    assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"
    (listed,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert listed["status"] == "RUNNING"
    events = sfn.get_execution_history(executionArn=arn)["events"]
    assert events and not END_EVENTS & {e["type"] for e in events}

    held.release.set()
    described = _wait_status(sfn, arn, "SUCCEEDED")
    assert described["output"] == "{}"
    on_disk = _on_disk(store.executions, arn)
    assert (on_disk.exec_status.value, on_disk.error) == ("SUCCEEDED", None)
    events = sfn.get_execution_history(executionArn=arn)["events"]
    assert events[-1]["type"] == "ExecutionSucceeded"


def test_a_failed_end_is_published_whole_after_its_record(
    store: Persistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Oops", "Cause": "c"}}}
    sfn, held, _, arn = _held_start(store, monkeypatch, failing)
    described = sfn.describe_execution(executionArn=arn)
    assert described["status"] == "RUNNING" and "error" not in described
    held.release.set()
    described = _wait_status(sfn, arn, "FAILED")
    assert (described["error"], described["cause"]) == ("Oops", "c")
    assert _on_disk(store.executions, arn).error == "Oops"


def test_a_running_record_after_the_end_record_does_not_undo_the_end(store: Persistence) -> None:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = sfn.start_execution(stateMachineArn=_machine(sfn), name="late", input="{}")[
        "executionArn"
    ]
    _wait_status(sfn, arn, "SUCCEEDED")
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    live = stepfunctions_parser_backends["123456789012"][REGION].describe_execution(arn)
    # The start record of an execution faster than its start's fsync lands after its end.
    late_start = copy.copy(live)
    late_start.exec_status = ExecutionStatus.RUNNING
    store.executions.record(late_start)
    latest, records = store.executions.latest()
    assert records >= 3  # start, end, the late start
    assert (latest[arn][1].exec_status.value, latest[arn][1].error) == ("SUCCEEDED", None)


def test_a_running_record_is_restored_failed_without_an_end_event(store: Persistence) -> None:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = sfn.start_execution(stateMachineArn=_machine(sfn), name="cut", input="{}")["executionArn"]
    _wait_status(sfn, arn, "SUCCEEDED")
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    # Its history has the end event, its status is still RUNNING: the held window, recorded.
    live = stepfunctions_parser_backends["123456789012"][REGION].describe_execution(arn)
    running = copy.copy(live)
    running.exec_status = ExecutionStatus.RUNNING
    journal = ExecutionJournal(store.root / "other.executions", store.s3.blobs)
    journal.load()
    journal.record(running)
    journal.close()
    (restored,) = [e for _, e in journal.latest()[0].values()]
    assert (restored.exec_status.value, restored.error) == ("FAILED", "Local.EmulatorRestarted")
    types = [e["type"] for e in restored.exec_worker.get_event_history()]
    assert types[0] == "ExecutionStarted" and not END_EVENTS & set(types)


def test_snapshots_are_pickled_under_their_service_guard(
    store: Persistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's moto state is pickled only while no request or log write changes it."""
    owned: list[bool] = []
    dump = persistence.dump

    def checking_dump(state: Any, *args: Any, **kwargs: Any) -> bytes:
        owned.append(store.guard("logs")._is_owned())  # type: ignore[attr-defined]
        return dump(state, *args, **kwargs)

    monkeypatch.setattr(persistence, "dump", checking_dump)
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName="g")
    store._write_snapshots({"logs"})
    assert owned == [True]


def test_log_writes_under_the_guard_never_break_a_snapshot(store: Persistence) -> None:
    """Streams added as fast as possible while the Logs state is snapshotted again and again."""
    from moto.logs.models import logs_backends

    backend = logs_backends["123456789012"][REGION]
    backend.create_log_group("g", {})
    stop = threading.Event()
    added: list[str] = []

    def write_logs() -> None:  # what the emulator's log sink does for each Lambda worker
        while not stop.is_set():
            name = f"s{len(added)}"
            with store.guard("logs"):
                backend.ensure_log_stream("g", name)
                backend.put_log_events("g", name, [{"timestamp": 1, "message": "m" * 100}])
            added.append(name)

    writer = threading.Thread(target=write_logs)
    writer.start()
    try:
        deadline = time.monotonic() + 1.0
        snapshots = 0
        while time.monotonic() < deadline or snapshots < 5:
            store._write_snapshots({"logs"})  # raises if the pickler saw a dict change size
            snapshots += 1
    finally:
        stop.set()
        writer.join()
    store._write_snapshots({"logs"})
    assert len(added) > 100
    with store.guard("logs"):
        payload = (store.root / "logs.pkl").read_bytes()
    state = persistence_pickle.StateUnpickler(
        __import__("io").BytesIO(payload), store.s3.blobs
    ).load()
    streams = state["backends"]["123456789012"][REGION].groups["g"].streams
    assert set(added) <= set(streams)


def test_mutating_requests_take_their_service_guard_and_reads_none(store: Persistence) -> None:
    def signed(service: str, method: str = "POST", target: str = "") -> dict[str, str]:
        credential = f"AKIA/20260101/us-east-1/{service}/aws4_request"
        environ = {
            "REQUEST_METHOD": method,
            "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential={credential}, Signature=x",
        }
        if target:
            environ["HTTP_X_AMZ_TARGET"] = target
        return environ

    assert store.request_guard(signed("logs", target="Logs_20140328.PutLogEvents"), None) is (
        store.guard("logs")
    )
    assert store.request_guard(signed("lambda"), None) is store.guard("lambda")
    read = store.request_guard(signed("logs", target="Logs_20140328.DescribeLogGroups"), None)
    assert read is not store.guard("logs")
    assert store.request_guard(signed("logs", method="GET"), None) is not store.guard("logs")


def test_concurrent_records_share_fsyncs_and_all_reach_the_disk(
    store: Persistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: writers waiting together are covered by one fsync, none is skipped."""
    from services.local_aws import persistence_executions

    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = sfn.start_execution(stateMachineArn=_machine(sfn), name="many", input="{}")[
        "executionArn"
    ]
    _wait_status(sfn, arn, "SUCCEEDED")
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    live = stepfunctions_parser_backends["123456789012"][REGION].describe_execution(arn)
    journal = ExecutionJournal(store.root / "group.executions", store.s3.blobs)
    journal.load()
    real_fsync = os.fsync
    synced_sizes: list[int] = []

    def slow_fsync(fd: int) -> None:  # a slow disk: writers pile up behind each fsync
        size = os.fstat(fd).st_size
        time.sleep(0.02)
        real_fsync(fd)
        synced_sizes.append(size)

    monkeypatch.setattr(persistence_executions.os, "fsync", slow_fsync)

    def write(n: int) -> None:
        for i in range(4):
            execution = copy.copy(live)
            execution.exec_arn = execution.execution_arn = f"{arn}-{n}-{i}"
            journal.record(execution)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    journal.close()
    latest, records = journal.latest()
    assert records == 64 and len(latest) == 64
    assert journal.fsyncs < 64, "writers that waited together shared an fsync"
    assert synced_sizes[-1] == (store.root / "group.executions").stat().st_size
