"""model_server_process: the handle to one model-server child process serving one variant.

The child is `services.model_server` (or `SAGEMAKER_LOCAL_SERVE_COMMAND`) on a free local port,
started through `processes.launch` so it never outlives sagemaker-local. It runs with the serving
venv's interpreter when that is installed (`python -m services.model_server.environment`: the
image's packages, CPU-only torch), else with sagemaker-local's own.
"""

from __future__ import annotations

import http.client
import logging
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from services.model_server.environment import serving_python

from . import processes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_BYTES = 4096


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    """The serving command; `SAGEMAKER_LOCAL_SERVE_COMMAND` swaps in another server."""
    custom = os.environ.get("SAGEMAKER_LOCAL_SERVE_COMMAND", "").strip()
    return shlex.split(custom) if custom else [serving_python(), "-m", "services.model_server"]


# SageMaker's serving-container variables that our model server takes as options.
ENV_OPTIONS = {
    "SAGEMAKER_MODEL_SERVER_WORKERS": "--workers",
    "SAGEMAKER_TS_BATCH_SIZE": "--max-batch-size",
    "SAGEMAKER_TS_MAX_BATCH_DELAY": "--max-batch-delay-ms",
}


class ModelServerFailed(Exception):
    """A model server that exited or never answered /ping."""


class ModelServerProcess:
    """One model-server process serving one production variant."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.environment = dict(environment or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while started."""
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the server process on a free port."""
        self.port = free_port()
        command = [
            *serve_command(),
            "--model-dir",
            str(self.model_dir),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        for var, option in ENV_OPTIONS.items():
            if self.environment.get(var):
                command += [option, str(self.environment[var])]
        env = {**os.environ, **self.environment, "SAGEMAKER_BIND_TO_PORT": str(self.port)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = processes.launch(
                command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
            )
        log.info("model server pid %s on port %s for %s", self.pid, self.port, self.model_dir)

    def log_tail(self) -> str:
        """The last lines the server wrote (its failure reason when it exits)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-5:])

    def wait_ready(self, timeout_s: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Poll /ping until 200; raise ModelServerFailed if the process exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        port_retries = 2
        while True:
            if self.proc.poll() is not None:
                if port_retries and "address already in use" in self.log_tail().lower():
                    # The free port was taken between choosing it and binding it: choose again.
                    port_retries -= 1
                    self.start()
                    continue
                raise ModelServerFailed(
                    f"model server exited with code {self.proc.returncode}: {self.log_tail()}"
                )
            if cancelled():
                raise ModelServerFailed("deployment cancelled")
            if self._ping():
                return
            if time.monotonic() > deadline:
                raise ModelServerFailed(f"/ping did not answer 200 within {timeout_s:.0f} s")
            time.sleep(0.05)

    def _ping(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server and its workers."""
        if self.proc is not None:
            processes.stop(self.proc)
