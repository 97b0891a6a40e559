"""Many Step Functions executions followed to their ends by one shared poll.

Polling each execution with its own DescribeExecution calls costs N calls per tick for N in
flight: under a 32-wide burst on the local stack the benchmark made 12 describes per execution,
and on AWS such polling runs into the DescribeExecution quota. `ExecutionWatch` instead lists
the state machine's RUNNING executions once per tick (ListExecutions, statusFilter=RUNNING,
every page) and wakes a caller only when its execution has left that list; the caller then
describes it once, in its own thread (so many ends in one tick are described in parallel).

ListExecutions is eventually consistent on AWS (a just-started execution may not be listed yet),
so the list is only a hint: an execution is done when a describe says so, and one a describe
still finds RUNNING is watched again. A caller without `states:ListExecutions` is not refused:
on AccessDenied every watched execution is woken (and described) each tick instead.

The tick adapts to the executions: a tenth of the median duration of the last ones that ended
(startDate -> stopDate), between `MIN_INTERVAL_S` and `MAX_INTERVAL_S`, so a caller's wall-time
error stays near 10 % while slow executions (on AWS) are not polled needlessly often.

    with ExecutionWatch(sfn, state_machine_arn) as watch:
        described = watch.follow(execution_arn, timeout_s=600)  # describe_execution's answer
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

from botocore.exceptions import ClientError

DEFAULT_INTERVAL_S = 0.05  # until executions have ended
MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 1.0
RECENT_DURATIONS = 50
LIST_PAGE_SIZE = 1000
_DENIED = {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"}


class WatchClosed(RuntimeError):
    """The watch was closed before the execution ended."""


class ExecutionWatch:
    """Follows executions of one state machine with one ListExecutions poll per tick."""

    def __init__(
        self, sfn: Any, state_machine_arn: str, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.sfn = sfn
        self.state_machine_arn = state_machine_arn
        self.interval_s = interval_s
        self.list_calls = 0
        self.describe_calls = 0
        self.listing = True  # False once ListExecutions was denied: describe each tick instead
        self._durations: list[float] = []
        self._waiting: dict[str, list[Future[None]]] = {}
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="execution-watch", daemon=True)
        self._thread.start()

    def follow(self, execution_arn: str, timeout_s: float = float("inf")) -> dict[str, Any]:
        """Block until the execution has ended; its DescribeExecution answer (the last RUNNING
        one after `timeout_s`). Raises WatchClosed if the watch is closed first."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self._left(execution_arn)
            remaining = deadline - time.monotonic()
            try:
                left.result(timeout=None if remaining == float("inf") else max(0.0, remaining))
            except FutureTimeout:
                self._forget(execution_arn, left)
            described: dict[str, Any] = self.sfn.describe_execution(executionArn=execution_arn)
            with self._changed:
                self.describe_calls += 1
            if described["status"] != "RUNNING":
                self._observe(described)
                return described
            if time.monotonic() >= deadline:
                return described

    def close(self) -> None:
        """Stop the watch (idempotent); callers still following get WatchClosed."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def __enter__(self) -> ExecutionWatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _left(self, execution_arn: str) -> Future[None]:
        """A future set once the execution is no longer listed RUNNING."""
        left: Future[None] = Future()
        with self._changed:
            if self._closed:
                raise WatchClosed("the execution watch is closed")
            self._waiting.setdefault(execution_arn, []).append(left)
            self._changed.notify()
        return left

    def _forget(self, execution_arn: str, left: Future[None]) -> None:
        with self._changed:
            waiting = self._waiting.get(execution_arn, [])
            if left in waiting:
                waiting.remove(left)
            if not waiting:
                self._waiting.pop(execution_arn, None)

    def _observe(self, described: dict[str, Any]) -> None:
        """The tick follows the durations of the executions that ended."""
        if not (described.get("stopDate") and described.get("startDate")):
            return
        with self._changed:
            self._durations = [
                *self._durations[1 - RECENT_DURATIONS :],
                (described["stopDate"] - described["startDate"]).total_seconds(),
            ]
            median = sorted(self._durations)[len(self._durations) // 2]
            self.interval_s = min(max(median / 10, MIN_INTERVAL_S), MAX_INTERVAL_S)

    # --- the polling thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    abandoned, self._waiting = self._waiting, {}
                    break
            started = time.monotonic()
            try:
                running = self._running()
            except Exception as error:  # e.g. connection refused: handed to every caller
                self._wake(None, error)
            else:
                self._wake(running)
            with self._changed:
                remaining = self.interval_s - (time.monotonic() - started)
                if remaining > 0 and not self._closed:
                    self._changed.wait_for(lambda: self._closed, remaining)
        for futures in abandoned.values():
            for left in futures:
                left.set_exception(WatchClosed("the execution watch was closed"))

    def _wake(self, running: set[str] | None, error: BaseException | None = None) -> None:
        """Wake the callers of executions not in `running` (all of them if None)."""
        with self._changed:
            woken = [arn for arn in self._waiting if running is None or arn not in running]
            futures = [left for arn in woken for left in self._waiting.pop(arn)]
        for left in futures:
            if error is not None:
                left.set_exception(error)
            elif not left.done():
                left.set_result(None)

    def _running(self) -> set[str]:
        """ARNs ListExecutions reports RUNNING now; empty (describe them all) if it failed."""
        if not self.listing:
            return set()
        running: set[str] = set()
        pages = self.sfn.get_paginator("list_executions").paginate(
            stateMachineArn=self.state_machine_arn,
            statusFilter="RUNNING",
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        try:
            for page in pages:
                self.list_calls += 1
                running.update(execution["executionArn"] for execution in page["executions"])
        except ClientError as error:
            self.list_calls += 1  # the call refused
            # Denied: never list again. Anything else (throttled after the client's own
            # retries, ...): this tick wakes every caller, whose describe says what happened.
            if error.response.get("Error", {}).get("Code") in _DENIED:
                self.listing = False
            return set()
        return running
