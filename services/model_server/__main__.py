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


# (flag, type, environment variables in precedence order, default, help); `None` help: no help.
_FLAGS: tuple[tuple[str, type, tuple[str, ...], str, str | None], ...] = (
    (
        "--model-dir",
        str,
        ("SM_MODEL_DIR",),
        "/opt/ml/model",
        "the unpacked model: weights and code/inference.py",
    ),
    ("--port", int, ("SAGEMAKER_BIND_TO_PORT", "MODEL_SERVER_PORT"), "8080", None),
    (
        "--workers",
        int,
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"),
        "1",
        "worker processes, each with the model loaded",
    ),
    (
        "--threads-per-worker",
        int,
        ("MODEL_SERVER_THREADS_PER_WORKER",),
        "0",
        "torch intra-op threads in each worker; 0: the CPUs left to the front end, shared",
    ),
    ("--max-batch-size", int, ("MODEL_SERVER_MAX_BATCH_SIZE",), "8", None),
    (
        "--max-batch-delay-ms",
        float,
        ("MODEL_SERVER_MAX_BATCH_DELAY_MS",),
        "0",
        "how long a request may wait for others to share its batch",
    ),
    (
        "--request-timeout",
        float,
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"),
        "60",
        "seconds a batch may take before its worker is replaced",
    ),
    (
        "--graceful-timeout",
        float,
        ("MODEL_SERVER_GRACEFUL_TIMEOUT",),
        "30",
        "seconds SIGTERM waits for in-flight requests",
    ),
    (
        "--content-types",
        str,
        ("MODEL_SERVER_CONTENT_TYPES",),
        ",".join(DEFAULT_CONTENT_TYPES),
        "comma-separated request content types passed to input_fn (others get 415)",
    ),
    (
        "--max-queue",
        int,
        ("MODEL_SERVER_MAX_QUEUE",),
        "256",
        "invocations that may wait for a worker; beyond it the answer is 503 (retryable)",
    ),
    (
        "--max-image-pixels",
        int,
        ("MODEL_SERVER_MAX_IMAGE_PIXELS",),
        str(DEFAULT_MAX_PIXELS),
        "largest image canvas decoded (pixels); larger ones get 400 before decoding",
    ),
    (
        "--max-image-bytes",
        int,
        ("MODEL_SERVER_MAX_IMAGE_BYTES",),
        str(DEFAULT_MAX_BYTES),
        "largest decoded image (bytes); larger ones get 400 before decoding",
    ),
)


def parse_config(argv: list[str] | None = None, container: bool = False) -> ServerConfig:
    """Read the settings from flags, then environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="serve" if container else "python -m services.model_server",
        description="SageMaker-compatible model server (GET /ping, POST /invocations).",
    )
    # SageMaker starts the image as `docker run IMAGE serve`; accept that word as a no-op.
    parser.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--host",
        default=_env("MODEL_SERVER_HOST", default="0.0.0.0" if container else "127.0.0.1"),
        help="address to bind (0.0.0.0 as the container's serve, 127.0.0.1 otherwise)",
    )
    for flag, kind, names, default, help_text in _FLAGS:
        # The type converts the environment value too: a bad variable fails as loudly as a flag.
        parser.add_argument(
            flag, type=kind, default=kind(_env(*names, default=default)), help=help_text
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
