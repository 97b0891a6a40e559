"""`python -m services.localstack_host install|up|down|status|env`: the stack without Docker.

`up` creates LocalStack's environment if needed, starts LocalStack 4.14.0 on 127.0.0.1 (`--port`,
default $LOCALSTACK_PORT or 4566) and sagemaker-local beside it (`--sagemaker-port`, default
$SAGEMAKER_LOCAL_PORT or 4570; `--no-sagemaker-local` for LocalStack alone), and writes the
`local` profile under the state folder (`--state-dir`, default $SCONES_STATE_DIR or .state).
`env` prints the export lines selecting it. Lambda functions do not run here: LocalStack's
free edition executes them only in Docker.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .environment import REPO_ROOT, EnvironmentUnavailable, InstallFailed, ensure_environment
from .host import LocalStackNotReady
from .stack import HostStackError, down, profile_env, status, up


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on a failure, 2 without Python >= 3.12, 3 when stopped."""
    parser = argparse.ArgumentParser(prog="python -m services.localstack_host", description=__doc__)
    parser.add_argument("command", choices=["install", "up", "down", "status", "env"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("SCONES_STATE_DIR", "").strip() or REPO_ROOT / ".state"),
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCALSTACK_PORT", 4566)))
    parser.add_argument(
        "--sagemaker-port", type=int, default=int(os.environ.get("SAGEMAKER_LOCAL_PORT", 4570))
    )
    parser.add_argument("--no-sagemaker-local", action="store_true", help="LocalStack alone")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            environment = ensure_environment()
            print(f"LocalStack environment ready: {environment.venv} (Python "
                  f"{environment.python_version}, {environment.install_seconds:.1f}s)")  # fmt: skip
        elif args.command == "up":
            print(f"Starting LocalStack host mode (state in {args.state_dir})")
            up(args.state_dir, args.port, None if args.no_sagemaker_local else args.sagemaker_port)
            print(f"  profile          local  ({args.state_dir / 'aws' / 'aws-config'})")
        elif args.command == "down":
            down(args.state_dir)
        elif args.command == "status":
            return 0 if status(args.state_dir) else 3
        else:
            env = profile_env(args.state_dir)
            if env is None:
                print("no profile yet: python -m services.localstack_host up", file=sys.stderr)
                return 1
            print("\n".join(f"export {name}={value}" for name, value in env.items()))
    except EnvironmentUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (InstallFailed, LocalStackNotReady, HostStackError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
