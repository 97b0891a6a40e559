"""The model server's command line: `python -m services.model_server`, or `serve` in the image.

Every setting is a flag with an environment variable behind it (the variable SageMaker sets first
where there is one):

| flag | environment | default |
|---|---|---|
| `--model-dir` | `SM_MODEL_DIR` | `/opt/ml/model` |
| `--host` | `MODEL_SERVER_HOST` | `127.0.0.1` locally, `0.0.0.0` as the container's `serve` |
| `--port` | `SAGEMAKER_BIND_TO_PORT`, `MODEL_SERVER_PORT` | `8080` |
| `--workers` | `SAGEMAKER_MODEL_SERVER_WORKERS`, `MODEL_SERVER_WORKERS` | `1` |
| `--threads-per-worker` | `MODEL_SERVER_THREADS_PER_WORKER` | `0`: (CPUs - 1) / workers, >= 1 |
| `--max-batch-size` | `MODEL_SERVER_MAX_BATCH_SIZE` | `8` |
| `--max-batch-delay-ms` | `MODEL_SERVER_MAX_BATCH_DELAY_MS` | `0` (batch what is waiting) |
| `--request-timeout` | `SAGEMAKER_MODEL_SERVER_TIMEOUT`, `MODEL_SERVER_TIMEOUT` | `60` s |
| `--graceful-timeout` | `MODEL_SERVER_GRACEFUL_TIMEOUT` | `30` s |
| `--content-types` | `MODEL_SERVER_CONTENT_TYPES` (comma-separated) | images, JSON, CSV, NPY |
| `--max-queue` | `MODEL_SERVER_MAX_QUEUE` | `256` invocations waiting; more are answered 503 |
| `--max-image-pixels` | `MODEL_SERVER_MAX_IMAGE_PIXELS` | `4194304` (2048x2048); 0: no limit |
| `--max-image-bytes` | `MODEL_SERVER_MAX_IMAGE_BYTES` | `33554432` decoded bytes; 0: no limit |
| (log level) | `MODEL_SERVER_LOG_LEVEL` | `INFO` |
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .image_budget import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageBudget
from .server import DEFAULT_CONTENT_TYPES, ServerConfig, serve


def _env(*names: str, default: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return default


def parse_config(argv: list[str] | None = None, container: bool = False) -> ServerConfig:
    """Read the settings from flags, then environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="serve" if container else "python -m services.model_server",
        description="SageMaker-compatible model server (GET /ping, POST /invocations).",
    )
    # SageMaker starts the image as `docker run IMAGE serve`; accept that word as a no-op.
    parser.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--model-dir",
        default=_env("SM_MODEL_DIR", default="/opt/ml/model"),
        help="the unpacked model: weights and code/inference.py",
    )
    parser.add_argument(
        "--host",
        default=_env("MODEL_SERVER_HOST", default="0.0.0.0" if container else "127.0.0.1"),
        help="address to bind (0.0.0.0 as the container's serve, 127.0.0.1 otherwise)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(_env("SAGEMAKER_BIND_TO_PORT", "MODEL_SERVER_PORT", default="8080")),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(_env("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS", default="1")),
        help="worker processes, each with the model loaded",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=int(_env("MODEL_SERVER_THREADS_PER_WORKER", default="0")),
        help="torch intra-op threads in each worker; 0: the CPUs left to the front end, shared",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=int(_env("MODEL_SERVER_MAX_BATCH_SIZE", default="8"))
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=float(_env("MODEL_SERVER_MAX_BATCH_DELAY_MS", default="0")),
        help="how long a request may wait for others to share its batch",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=float(_env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT", default="60")),
        help="seconds a batch may take before its worker is replaced",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=float(_env("MODEL_SERVER_GRACEFUL_TIMEOUT", default="30")),
        help="seconds SIGTERM waits for in-flight requests",
    )
    parser.add_argument(
        "--content-types",
        default=_env("MODEL_SERVER_CONTENT_TYPES", default=",".join(DEFAULT_CONTENT_TYPES)),
        help="comma-separated request content types passed to input_fn (others get 415)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=int(_env("MODEL_SERVER_MAX_QUEUE", default="256")),
        help="invocations that may wait for a worker; beyond it the answer is 503 (retryable)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=int(_env("MODEL_SERVER_MAX_IMAGE_PIXELS", default=str(DEFAULT_MAX_PIXELS))),
        help="largest image canvas decoded (pixels); larger ones get 400 before decoding",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=int(_env("MODEL_SERVER_MAX_IMAGE_BYTES", default=str(DEFAULT_MAX_BYTES))),
        help="largest decoded image (bytes); larger ones get 400 before decoding",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.max_batch_size < 1 or args.threads_per_worker < 0:
        parser.error("--workers and --max-batch-size must be at least 1")
    if args.max_queue < 1 or args.max_image_pixels < 0 or args.max_image_bytes < 0:
        parser.error("--max-queue must be at least 1, the image budgets at least 0")
    threads = args.threads_per_worker
    if threads == 0:
        # One CPU for the front end; spinning OpenMP threads that outnumber the CPUs starve it.
        threads = max(1, (len(os.sched_getaffinity(0)) - 1) // args.workers)
    return ServerConfig(
        model_dir=Path(args.model_dir),
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        threads_per_worker=threads,
        request_timeout_s=args.request_timeout,
        graceful_timeout_s=args.graceful_timeout,
        content_types=tuple(t.strip().lower() for t in args.content_types.split(",") if t.strip()),
        check_host=not container,
        max_queue=args.max_queue,
        image_budget=ImageBudget(args.max_image_pixels, args.max_image_bytes),
    )


def main(argv: list[str] | None = None) -> int:
    """Run locally: binds 127.0.0.1 unless --host says otherwise."""
    return serve(parse_config(argv))


def container_main(argv: list[str] | None = None) -> int:
    """Run as the image's `serve` command: binds 0.0.0.0:8080 as SageMaker requires."""
    return serve(parse_config(argv, container=True))


if __name__ == "__main__":
    sys.exit(main())
