"""`python -m services.local_aws`: run the embedded AWS emulator in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import iam_enforcement, persistence
from .server import Emulator, EmulatorConfig


def _parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--lambda-env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, bind, serve until SIGTERM/SIGINT, then stop every worker."""
    parser = argparse.ArgumentParser(prog="python -m services.local_aws", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("LOCAL_AWS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_AWS_PORT", "4566")))
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("SCONES_STATE_DIR", ".state"))
    )
    parser.add_argument(
        "--lambda-concurrency",
        type=int,
        default=int(os.environ.get("LOCAL_AWS_LAMBDA_CONCURRENCY", "16")),
        help="most concurrent executions (warm workers) per function",
    )
    parser.add_argument(
        "--lambda-idle-timeout",
        type=float,
        default=float(os.environ.get("LOCAL_AWS_LAMBDA_IDLE_TIMEOUT", "300")),
        help="seconds an idle worker is kept warm",
    )
    parser.add_argument(
        "--lambda-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for Lambda code, e.g. AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=...",
    )
    parser.add_argument(
        "--no-lambda-isolation",
        action="store_true",
        default=os.environ.get("LOCAL_AWS_LAMBDA_ISOLATION", "1") == "0",
        help="let Lambda code import every package of this venv (AWS offers only boto3)",
    )
    parser.add_argument(
        "--no-persist",
        action="store_true",
        default=not persistence.enabled_by_environment(),
        help="keep state in memory only (LOCAL_AWS_PERSIST=0; default: kept in STATE_DIR/persist)",
    )
    parser.add_argument(
        "--no-iam-enforcement",
        action="store_true",
        default=not iam_enforcement.enabled_by_environment(),
        help="do not evaluate IAM policies for role credentials (LOCAL_AWS_IAM_ENFORCE=0)",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="load moto in the background once listening, not on the first request",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {pid, port, endpoint_url} as JSON here once listening (use with --port 0)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOCAL_AWS_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir.resolve(),
        lambda_concurrency=args.lambda_concurrency,
        lambda_idle_timeout_s=args.lambda_idle_timeout,
        lambda_env=_parse_env_pairs(args.lambda_env),
        lambda_isolation=not args.no_lambda_isolation,
        persist=not args.no_persist,
        iam_enforce=not args.no_iam_enforcement,
        preload=args.preload,
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    emulator = Emulator(config)
    try:
        emulator.bind()
    except OSError as error:
        print(f"local_aws: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        # Raised in the main thread, inside serve_forever's select: the loop ends now, not at
        # its next 0.5 s poll. Later signals are ignored while stopping (SIGKILL still works).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stopping(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.ready_file:
            ready = {
                "pid": os.getpid(),
                "port": config.port,
                "endpoint_url": emulator.endpoint_url,
            }
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready))
            tmp.replace(args.ready_file)
        logging.getLogger("local_aws").info(
            "ready on http://%s:%d (state %s)", config.host, config.port, config.state_dir
        )
        emulator.serve_forever()
    except _Stopping as stopping:
        logging.getLogger("local_aws").info("signal %d: shutting down", stopping.signum)
    status = 0
    try:
        emulator.shutdown()  # workers killed together, then the state written and closed
    except Exception:
        logging.getLogger("local_aws").exception("shutdown failed")
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written: skip the interpreter's finalisation (it joins request and executor
    # threads, which may be waiting on a killed worker, and tears down thousands of modules).
    os._exit(status)


class _Stopping(BaseException):
    """SIGTERM or SIGINT arrived: leave serve_forever at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


if __name__ == "__main__":
    sys.exit(main())
