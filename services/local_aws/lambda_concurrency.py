"""Concurrency as Lambda meters it: reserved concurrency per function and an account-level limit.

An invocation over either limit is throttled at once (TooManyRequestsException, HTTP 429, with
AWS's `Reason`), not queued: callers see what they would see on AWS and their retries apply.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

# A laptop-sized default for the account's concurrent executions (AWS's default quota is 1000).
DEFAULT_ACCOUNT_LIMIT = int(os.environ.get("LOCAL_AWS_LAMBDA_ACCOUNT_CONCURRENCY", "64"))

RESERVED_EXCEEDED = "ReservedFunctionConcurrentInvocationLimitExceeded"
ACCOUNT_EXCEEDED = "ConcurrentInvocationLimitExceeded"


class Throttled(Exception):
    """An invocation refused because a concurrency limit is reached."""

    def __init__(self, reason: str) -> None:
        super().__init__("Rate Exceeded.")
        self.reason = reason


class ConcurrencyMeter:
    """Counts executions in flight, per function and for the account."""

    def __init__(self, account_limit: int = DEFAULT_ACCOUNT_LIMIT) -> None:
        self.account_limit = account_limit
        self._lock = threading.Lock()
        self._total = 0
        self._per_function: dict[str, int] = {}

    @contextlib.contextmanager
    def execution(self, function_arn: str, reserved: int | None) -> Iterator[None]:
        """Hold one unit of concurrency for the duration of an invocation, or raise Throttled."""
        with self._lock:
            running = self._per_function.get(function_arn, 0)
            if reserved is not None and running >= reserved:
                raise Throttled(RESERVED_EXCEEDED)
            if self._total >= self.account_limit:
                raise Throttled(ACCOUNT_EXCEEDED)
            self._per_function[function_arn] = running + 1
            self._total += 1
        try:
            yield
        finally:
            with self._lock:
                self._total -= 1
                left = self._per_function[function_arn] - 1
                if left:
                    self._per_function[function_arn] = left
                else:
                    del self._per_function[function_arn]

    def in_flight(self, function_arn: str | None = None) -> int:
        """Executions running now, for one function or the account."""
        with self._lock:
            if function_arn is None:
                return self._total
            return self._per_function.get(function_arn, 0)
