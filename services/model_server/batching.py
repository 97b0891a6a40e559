"""Dynamic batching of concurrent invocations, TorchServe-style.

A worker that is free takes the oldest waiting request and keeps collecting until the batch holds
`max_batch_size` requests or `max_batch_delay` has passed since that request arrived. With a delay
of 0 a batch is whatever is already waiting: no request ever waits for company, and batches grow
by themselves while the workers are busy (what measured best; see the benchmark).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False)
class PendingInvocation:
    """One `/invocations` request waiting for its answer from a worker."""

    body: bytes
    content_type: str
    accept: str
    future: asyncio.Future[InvocationResult]
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class InvocationResult:
    """What the server answers for one invocation."""

    status: int
    body: bytes
    content_type: str


class BatchQueue:
    """The queue of pending invocations that workers take batches from."""

    def __init__(self, max_batch_size: int, max_batch_delay_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max(0.0, max_batch_delay_s)
        self._items: deque[PendingInvocation] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # One collector at a time, so a batch being filled gets new arrivals before anyone else.
        self._collecting = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: PendingInvocation) -> None:
        """Queue one invocation and wake the collector."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def requeue(self, batch: list[PendingInvocation]) -> None:
        """Put a batch that was never sent back at the head of the queue, in order."""
        self._items.extendleft(reversed(batch))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def drain(self) -> list[PendingInvocation]:
        """Remove and return everything still waiting (used on shutdown)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def next_batch(self) -> list[PendingInvocation]:
        """Wait for the next batch: up to max_batch_size requests, or max_batch_delay."""
        async with self._collecting:
            batch: list[PendingInvocation] = []
            while not batch:
                await self._take_into(batch, wait=None)
            deadline = batch[0].arrived + self.max_batch_delay_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if not self._items and remaining <= 0:
                    break
                await self._take_into(batch, wait=remaining)
                if not self._items and time.monotonic() >= deadline:
                    break
            return batch

    async def _take_into(self, batch: list[PendingInvocation], wait: float | None) -> None:
        """Move waiting requests into the batch, first waiting up to `wait` s (None: forever)."""
        if not self._items and (wait is None or wait > 0):
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                async with asyncio.timeout(wait):
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if not item.future.done():  # the client may have gone away meanwhile
                batch.append(item)
