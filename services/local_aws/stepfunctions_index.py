"""Executions found by name and ARN through an index, not by scanning every execution.

moto finds an execution by walking its state machine's `executions` list: StartExecution (the
name's idempotency check) and every DescribeExecution and GetExecutionHistory. After a few
thousand executions that walk was the emulator's largest single cost under a burst (each poll
of each running execution paid it). The index answers the same first match the walk would.

The list stays moto's (and the persistence journal's) to change: executions are appended, and
a restore replaces or reorders them in place. The index follows appends incrementally and is
rebuilt when anything else happened: a hit must still sit at its indexed position, and the
list must still end with the execution last indexed, so a stale index is never believed.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any


class _Index:
    """Positions of a list's executions by name and by ARN (first occurrence wins)."""

    def __init__(self, executions: list[Any]) -> None:
        self.source = executions
        self.count = 0
        self.last: Any = None
        self.by_name: dict[str, int] = {}
        self.by_arn: dict[str, int] = {}
        self.catch_up()

    def current(self) -> bool:
        """Whether the list is still the one indexed, only appended to since."""
        executions = self.source
        if len(executions) < self.count:
            return False
        return self.count == 0 or executions[self.count - 1] is self.last

    def catch_up(self) -> None:
        executions = self.source
        for position in range(self.count, len(executions)):
            execution = executions[position]
            self.by_name.setdefault(execution.name, position)
            self.by_arn.setdefault(execution.execution_arn, position)
        self.count = len(executions)
        self.last = executions[-1] if executions else None

    def find(self, table: dict[str, int], key: str) -> Any:
        position = table.get(key)
        if position is None:
            return None
        return self.source[position]


_indexes: weakref.WeakKeyDictionary[Any, _Index] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _index_of(machine: Any) -> _Index:
    with _lock:
        index = _indexes.get(machine)
        if index is None or index.source is not machine.executions or not index.current():
            index = _indexes[machine] = _Index(machine.executions)
        else:
            index.catch_up()
        return index


def by_name(machine: Any, name: str) -> Any:
    """The first execution of `machine` named `name`, or None."""
    index = _index_of(machine)
    return index.find(index.by_name, name)


def by_arn(machine: Any, execution_arn: str) -> Any:
    """The first execution of `machine` with this ARN, or None."""
    index = _index_of(machine)
    return index.find(index.by_arn, execution_arn)


def install() -> None:
    """moto's two walks replaced by index lookups (same results, same errors)."""
    from moto.stepfunctions.exceptions import ExecutionAlreadyExists, ExecutionDoesNotExist
    from moto.stepfunctions.models import StateMachine, StepFunctionBackend

    def _handle_name_input_idempotency(self: Any, name: str, execution_input: str) -> Any:
        execution = by_name(self, name)
        if execution is None:
            return None
        # Executions with the same name and input are idempotent while running (moto's rule).
        if execution_input == execution.execution_input and execution.status == "RUNNING":
            return execution
        raise ExecutionAlreadyExists("Execution Already Exists: '" + execution.execution_arn + "'")

    def describe_execution(self: Any, execution_arn: str) -> Any:
        self._validate_execution_arn(execution_arn)
        state_machine = self._get_state_machine_for_execution(execution_arn)
        execution = by_arn(state_machine, execution_arn)
        if execution is None:
            raise ExecutionDoesNotExist("Execution Does Not Exist: '" + execution_arn + "'")
        return execution

    StateMachine._handle_name_input_idempotency = _handle_name_input_idempotency  # type: ignore[method-assign]
    StepFunctionBackend.describe_execution = describe_execution  # type: ignore[method-assign]
