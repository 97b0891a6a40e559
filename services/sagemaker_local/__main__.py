"""Run sagemaker-local: `python -m services.sagemaker_local --port 4570 --state-dir DIR`.

Knobs (flags win over environment variables):

| flag / variable | default | meaning |
|---|---|---|
| `--host` / `SAGEMAKER_LOCAL_HOST` | 127.0.0.1 | address to bind |
| `--port` / `SAGEMAKER_LOCAL_PORT` | 4570 | port of control plane and runtime |
| `--state-dir` / `SAGEMAKER_LOCAL_STATE_DIR` | `.state/sagemaker-local` | all its state |
| `SAGEMAKER_LOCAL_ACCOUNT_ID` | from STS | account in ARNs and messages |
| `SAGEMAKER_LOCAL_STS_DEADLINE_S` | 30 | how long to retry STS GetCallerIdentity at start |
| `SAGEMAKER_LOCAL_STOP_GRACE_S` | 120 | SIGTERM -> SIGKILL of a stopped job (AWS: 120 s) |
| `SAGEMAKER_LOCAL_STARTUP_TIMEOUT_S` | 600 | /ping deadline of a new model server |
| `SAGEMAKER_LOCAL_INVOCATION_TIMEOUT_S` | 60 | InvokeEndpoint timeout (AWS: 60 s) |
| `SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS` | 2 | capture objects written to S3 at least this often |
| `SAGEMAKER_LOCAL_CAPTURE_FLUSH_BYTES` | 1048576 | ... or once a spool file is this large |
| `SAGEMAKER_LOCAL_CAPTURE_SPOOL_MAX_BYTES` | 1 GiB | capture spool bound on disk (0: none) |
| `SAGEMAKER_LOCAL_CAPTURE_SYNC_SECONDS` | 0.1 | fdatasync of open spool files (0: at seal) |
| `SAGEMAKER_LOCAL_MAX_ENDPOINTS` | 16 | endpoints running at once |
| `SAGEMAKER_LOCAL_MAX_TRAINING_JOBS` | 4 | training jobs running at once |
| `SAGEMAKER_LOCAL_MAX_MODEL_BYTES` | 8 GiB | largest unpacked model archive |
| `SAGEMAKER_LOCAL_SERVE_COMMAND` | `python -m services.model_server` | serving command |

AWS access (S3, CloudWatch Logs, STS) goes through the standard configuration (`AWS_PROFILE`).
Calls signed with role (STS session) credentials are authorized by the emulator that this
configuration points STS at (`authorization.py`); against real AWS endpoints nothing is checked.
SIGTERM/SIGINT stop it cleanly: model servers and training processes stopped, capture shipped.
Captured records are on local disk before InvokeEndpoint answers (`capture_spool`): a SIGKILL
loses none; a power loss at most the last 0.1 s (`SAGEMAKER_LOCAL_CAPTURE_SYNC_SECONDS`). A dead
model server is replaced (`supervisor`); a second process on the same `--state-dir` refuses to
start (`state_lock`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from .state_lock import StateFolderBusy, lock_state_folder

if TYPE_CHECKING:
    from .authorization import Authorizer

REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("sagemaker_local")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


class AccountUnknown(RuntimeError):
    """STS could not tell whose account this is: no ARN may be invented."""


def resolve_account(session: boto3.session.Session, deadline_s: float | None = None) -> str:
    """The caller's account: configured, or asked of STS with retries until a deadline.

    Never a made-up default: ARNs with the wrong account break IAM policies and the deploy's
    comparisons, so a backend whose STS does not answer is a start-up failure, said loudly.
    """
    configured = os.environ.get("SAGEMAKER_LOCAL_ACCOUNT_ID", "").strip()
    if configured:
        return configured
    if deadline_s is None:
        deadline_s = float(_env("SAGEMAKER_LOCAL_STS_DEADLINE_S", "30"))
    sts = session.client(
        "sts", config=Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 1})
    )
    deadline = time.monotonic() + deadline_s
    delay = 0.1
    attempts = 0
    while True:
        attempts += 1
        try:
            return str(sts.get_caller_identity()["Account"])
        except Exception as exc:  # any failure is retried until the deadline
            last = exc
        if time.monotonic() + delay > deadline:
            raise AccountUnknown(
                f"STS GetCallerIdentity failed {attempts} time(s) within {deadline_s:g} s "
                f"({type(last).__name__}: {last}); set SAGEMAKER_LOCAL_ACCOUNT_ID or make STS "
                "reachable (AWS_PROFILE / AWS_ENDPOINT_URL_STS)"
            )
        log.info("STS not answering yet (%s); retrying in %.1f s", last, delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


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
    # One botocore loader for every client here (a second one costs ~6.7 MB PSS, measured).
    boto3.DEFAULT_SESSION = session
    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        state_lock = lock_state_folder(state_dir)
    except StateFolderBusy as exc:
        log.error("%s", exc)
        sys.exit(f"sagemaker-local: {exc}")
    # STS is asked while the server's own modules load: the emulator behind it may be loading
    # moto on this very request (~0.4 s), and the imports below take about as long.
    pool = ThreadPoolExecutor(1, thread_name_prefix="sts")
    account = pool.submit(resolve_account, session)
    pool.shutdown(wait=False)  # the one call still runs; result() waits for it
    import uvicorn

    from .backend import BackendConfig, SageMakerBackend
    from .capture_spool import DEFAULT_MAX_SPOOL_BYTES
    from .responses import SageMakerApp

    try:
        account_id = account.result()
    except AccountUnknown as exc:
        log.error("sagemaker-local cannot start: %s", exc)
        sys.exit(f"sagemaker-local: {exc}")
    config = BackendConfig(
        state_dir=state_dir,
        region=session.region_name or "us-east-1",
        account_id=account_id,
        startup_timeout_s=float(_env("SAGEMAKER_LOCAL_STARTUP_TIMEOUT_S", "600")),
        invocation_timeout_s=float(_env("SAGEMAKER_LOCAL_INVOCATION_TIMEOUT_S", "60")),
        max_endpoints=int(_env("SAGEMAKER_LOCAL_MAX_ENDPOINTS", "16")),
        max_training_jobs=int(_env("SAGEMAKER_LOCAL_MAX_TRAINING_JOBS", "4")),
        capture_flush_interval_s=float(_env("SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS", "2")),
        capture_flush_bytes=int(_env("SAGEMAKER_LOCAL_CAPTURE_FLUSH_BYTES", str(1 << 20))),
        capture_spool_max_bytes=int(
            _env("SAGEMAKER_LOCAL_CAPTURE_SPOOL_MAX_BYTES", str(DEFAULT_MAX_SPOOL_BYTES))
        ),
        capture_sync_interval_s=float(_env("SAGEMAKER_LOCAL_CAPTURE_SYNC_SECONDS", "0.1")),
    )
    backend = SageMakerBackend(config)
    authorizer = _authorizer(session, config.region)
    log.info(
        "sagemaker-local on http://%s:%s (region %s, account %s, state %s)",
        args.host,
        args.port,
        config.region,
        config.account_id,
        state_dir,
    )
    uvicorn.run(
        SageMakerApp(backend, bind_host=args.host, authorizer=authorizer),
        host=args.host,
        port=args.port,
        lifespan="on",
        log_level=args.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    state_lock.close()


def _authorizer(session: boto3.session.Session, region: str) -> Authorizer | None:
    """IAM checks through the emulator our own STS calls go to (None: real AWS, no checks)."""
    from .authorization import Authorizer

    emulator_url = session.client("sts").meta.endpoint_url
    credentials = session.get_credentials()
    own_key = credentials.access_key if credentials is not None else ""
    authorizer = Authorizer.for_endpoint(emulator_url, region, [own_key])
    log.info("IAM for role credentials: %s", f"asked of {emulator_url}" if authorizer else "off")
    return authorizer


if __name__ == "__main__":
    main()
