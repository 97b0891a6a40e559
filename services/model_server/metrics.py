"""Prometheus text-format metrics of the model server, kept in the front-end process."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """A cumulative histogram with fixed upper bounds, as Prometheus exposes it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last slot is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        """The `_bucket`, `_sum` and `_count` lines of this histogram."""
        sep = "," if labels else ""
        lines = []
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else _number(bound)
            lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
        braces = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{braces} {_number(self.total)}")
        lines.append(f"{name}_count{braces} {self.count}")
        return lines


class ServerMetrics:
    """Counters, gauges and histograms of requests, errors, batches and workers."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
        self.request_latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.worker_restarts = 0
        self.workers_ready = 0
        self.queue_depth = 0
        self.in_flight = 0

    def record_request(self, path: str, status: int) -> None:
        """Count one answered request by path and status code."""
        self.requests[(path, status)] += 1

    def record_error(self, reason: str) -> None:
        """Count one failed invocation by reason (`model_error`, `worker_died`, ...)."""
        self.errors[reason] += 1

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format (version 0.0.4)."""
        out = [
            "# HELP model_server_requests_total HTTP requests answered, by path and status.",
            "# TYPE model_server_requests_total counter",
        ]
        for (path, status), count in sorted(self.requests.items()):
            out.append(f'model_server_requests_total{{path="{path}",status="{status}"}} {count}')
        out += [
            "# HELP model_server_errors_total Invocations that failed, by reason.",
            "# TYPE model_server_errors_total counter",
        ]
        for reason, count in sorted(self.errors.items()):
            out.append(f'model_server_errors_total{{reason="{reason}"}} {count}')
        out += [
            "# HELP model_server_request_duration_seconds Invocation latency in the server.",
            "# TYPE model_server_request_duration_seconds histogram",
            *self.request_latency.render("model_server_request_duration_seconds"),
            "# HELP model_server_batch_duration_seconds Time a worker took for one batch.",
            "# TYPE model_server_batch_duration_seconds histogram",
            *self.batch_latency.render("model_server_batch_duration_seconds"),
            "# HELP model_server_batch_size Requests per batch sent to a worker.",
            "# TYPE model_server_batch_size histogram",
            *self.batch_size.render("model_server_batch_size"),
            "# HELP model_server_worker_restarts_total Worker processes restarted after dying.",
            "# TYPE model_server_worker_restarts_total counter",
            f"model_server_worker_restarts_total {self.worker_restarts}",
            "# HELP model_server_workers_ready Worker processes with the model loaded.",
            "# TYPE model_server_workers_ready gauge",
            f"model_server_workers_ready {self.workers_ready}",
            "# HELP model_server_queue_depth Invocations waiting for a worker.",
            "# TYPE model_server_queue_depth gauge",
            f"model_server_queue_depth {self.queue_depth}",
            "# HELP model_server_in_flight Invocations received and not yet answered.",
            "# TYPE model_server_in_flight gauge",
            f"model_server_in_flight {self.in_flight}",
        ]
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
