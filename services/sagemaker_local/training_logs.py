"""A training job's log lines shipped to CloudWatch Logs, as SageMaker's agent does.

Group `/aws/sagemaker/TrainingJobs`, stream `<job>/algo-1-<epoch>`; lines are batched about
once a second. Best effort: without a reachable Logs endpoint the job still runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import boto3

log = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
PUT_BATCH = 1000  # PutLogEvents' most events per call


class CloudWatchLogShipper:
    """Buffers log lines and puts them to CloudWatch Logs about once a second (best effort)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: Any = None
        self._thread = threading.Thread(target=self._run, name=f"logs-{stream}", daemon=True)
        try:
            self._client = boto3.client("logs")
            with contextlib.suppress(self._client.exceptions.ResourceAlreadyExistsException):
                self._client.create_log_group(logGroupName=LOG_GROUP)
            self._client.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        except Exception as exc:  # logs are a convenience, never a failure
            log.info("CloudWatch Logs unavailable for %s: %s", stream, exc)
            self._client = None
        self._thread.start()

    def add(self, line: str) -> None:
        """Queue one line."""
        if self._client is not None:
            with self._lock:
                self._lines.append({"timestamp": int(time.time() * 1000), "message": line})

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        for start in range(0, len(lines), PUT_BATCH):
            try:
                self._client.put_log_events(
                    logGroupName=LOG_GROUP,
                    logStreamName=self.stream,
                    logEvents=lines[start : start + PUT_BATCH],
                )
            except Exception as exc:
                log.info("CloudWatch Logs put failed for %s: %s", self.stream, exc)
                return

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self._client is not None:
                self._flush()

    def close(self) -> None:
        """Ship what is left."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self._client is not None:
            self._flush()
