"""Run sagemaker-local: `python -m services.sagemaker_local --port 4570 --state-dir DIR`.

Knobs (flags win over environment variables):

| flag / variable | default | meaning |
|---|---|---|
| `--host` / `SAGEMAKER_LOCAL_HOST` | 127.0.0.1 | address to bind |
| `--port` / `SAGEMAKER_LOCAL_PORT` | 4570 | port of control plane and runtime |
| `--state-dir` / `SAGEMAKER_LOCAL_STATE_DIR` | `.state/sagemaker-local` | all its state |
| `SAGEMAKER_LOCAL_ACCOUNT_ID` | from STS, else 123456789012 | account in ARNs and messages |
| `SAGEMAKER_LOCAL_STARTUP_TIMEOUT_S` | 600 | /ping deadline of a new model server |
| `SAGEMAKER_LOCAL_INVOCATION_TIMEOUT_S` | 60 | InvokeEndpoint timeout (AWS: 60 s) |
| `SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS` | 2 | capture files written at least this often |
| `SAGEMAKER_LOCAL_CAPTURE_FLUSH_BYTES` | 1048576 | ... or once this much is buffered |
| `SAGEMAKER_LOCAL_MAX_ENDPOINTS` | 16 | endpoints running at once |
| `SAGEMAKER_LOCAL_MAX_TRAINING_JOBS` | 4 | training jobs running at once |
| `SAGEMAKER_LOCAL_MAX_MODEL_BYTES` | 8 GiB | largest unpacked model archive |
| `SAGEMAKER_LOCAL_SERVE_COMMAND` | `python -m services.model_server` | serving command |

AWS access (S3, CloudWatch Logs, STS) goes through the standard configuration (`AWS_PROFILE`).
SIGTERM/SIGINT stop it cleanly: model servers and training processes stopped, capture flushed.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import boto3
import uvicorn
from botocore.config import Config

from .models import BackendConfig, SageMakerBackend
from .responses import SageMakerApp

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ACCOUNT = "123456789012"

log = logging.getLogger("sagemaker_local")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def resolve_account(session: boto3.session.Session) -> str:
    """The caller's account: configured, or asked of STS (quickly), or the emulator default."""
    configured = os.environ.get("SAGEMAKER_LOCAL_ACCOUNT_ID", "").strip()
    if configured:
        return configured
    try:
        sts = session.client(
            "sts",
            config=Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 1}),
        )
        return str(sts.get_caller_identity()["Account"])
    except Exception as exc:  # no STS (or no credentials) is not fatal
        log.info("STS unavailable (%s); using account %s", exc, DEFAULT_ACCOUNT)
        return DEFAULT_ACCOUNT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m services.sagemaker_local", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default=_env("SAGEMAKER_LOCAL_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(_env("SAGEMAKER_LOCAL_PORT", "4570")))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(
            _env("SAGEMAKER_LOCAL_STATE_DIR", str(REPO_ROOT / ".state" / "sagemaker-local"))
        ),
    )
    parser.add_argument("--log-level", default=_env("SAGEMAKER_LOCAL_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start sagemaker-local and serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    session = boto3.session.Session()
    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    config = BackendConfig(
        state_dir=state_dir,
        region=session.region_name or "us-east-1",
        account_id=resolve_account(session),
        startup_timeout_s=float(_env("SAGEMAKER_LOCAL_STARTUP_TIMEOUT_S", "600")),
        invocation_timeout_s=float(_env("SAGEMAKER_LOCAL_INVOCATION_TIMEOUT_S", "60")),
        max_endpoints=int(_env("SAGEMAKER_LOCAL_MAX_ENDPOINTS", "16")),
        max_training_jobs=int(_env("SAGEMAKER_LOCAL_MAX_TRAINING_JOBS", "4")),
        capture_flush_interval_s=float(_env("SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS", "2")),
        capture_flush_bytes=int(_env("SAGEMAKER_LOCAL_CAPTURE_FLUSH_BYTES", str(1 << 20))),
    )
    backend = SageMakerBackend(config)
    log.info(
        "sagemaker-local on http://%s:%s (region %s, account %s, state %s)",
        args.host,
        args.port,
        config.region,
        config.account_id,
        state_dir,
    )
    uvicorn.run(
        SageMakerApp(backend),
        host=args.host,
        port=args.port,
        lifespan="on",
        log_level=args.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
