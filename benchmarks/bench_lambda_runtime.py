"""Benchmark of the Lambda runtime: cold start, warm invoke, timeout answer, stop with many workers.

`python -m benchmarks.bench_lambda_runtime [REPO_ROOT ...]` runs the same measurements against
the emulator of each repository root given (default: this one), e.g. a `git archive HEAD` copy
next to the working tree, so a change is compared with its baseline in one run. Warm invoke is
also reported as a ratio over a plain control-plane call (GetFunctionConfiguration) measured in
the same loop, since these machines are noisy.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from scones.deploy.iam import trust
from scones.testing_functions import create_function
from scones.testing_processes import descendants, pss_mb
from services.local_aws.profile import write_profile

HANDLER = (
    "import time\n"
    "def handler(event, context):\n"
    "    time.sleep(event.get('sleep', 0))\n"
    "    return {'echo': event.get('n')}\n"
)
TRUST = trust("lambda.amazonaws.com")
WARM_ENVIRONMENTS = int(os.environ.get("BENCH_WARM_ENVIRONMENTS", "100"))
COLD_FUNCTIONS = int(os.environ.get("BENCH_COLD_FUNCTIONS", "21"))


# A handler as the course writes them: a boto3 client made at import.
BOTO3_HANDLER = (
    "import boto3\n"
    "s3 = boto3.client('s3')\n"
    "def handler(event, context):\n"
    "    return {'region': s3.meta.region_name}\n"
)
BOTO3_ENVIRONMENTS = 20


def _start(root: Path, state: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = state / "ready.json"
    state.mkdir(parents=True)
    env = {**os.environ, "LOCAL_AWS_LAMBDA_MAX_ENVIRONMENTS": str(WARM_ENVIRONMENTS + 16)}
    command = [sys.executable, "-m", "services.local_aws", "--port", "0"]
    command += ["--state-dir", str(state), "--ready-file", str(ready)]
    if "--no-persist" in (root / "services/local_aws/__main__.py").read_text():
        command.append("--no-persist")  # persistence is measured elsewhere; not a baseline's
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(state / "log", "wb"),  # noqa: SIM115 - the child owns it
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((state / "log").read_text())
        try:
            endpoint = json.loads(ready.read_text())["endpoint_url"]
            break
        except (OSError, ValueError, KeyError):  # not written (completely) yet
            time.sleep(0.02)
    return process, write_profile(state / "profile", endpoint)


def _cpu_ms(pid: int) -> float:
    """utime + stime of one process so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


def measure(root: Path) -> dict[str, float]:
    """All figures for the emulator in one repository root."""
    with tempfile.TemporaryDirectory() as tmp:
        process, env = _start(root, Path(tmp) / "state")
        saved = dict(os.environ)
        os.environ.update(env)
        boto3.DEFAULT_SESSION = None
        try:
            iam, lam = boto3.client("iam"), boto3.client("lambda")
            role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
            cold = []
            for _ in range(COLD_FUNCTIONS):
                name = f"cold-{uuid.uuid4().hex[:8]}"
                create_function(lam, name, HANDLER, role)
                started = time.perf_counter()
                lam.invoke(FunctionName=name, Payload=b'{"n": 0}')["Payload"].read()
                cold.append((time.perf_counter() - started) * 1000)
            warm, control = [], []
            for i in range(300):
                started = time.perf_counter()
                lam.invoke(FunctionName=name, Payload=json.dumps({"n": i}).encode())[
                    "Payload"
                ].read()
                warm.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                lam.get_function_configuration(FunctionName=name)
                control.append((time.perf_counter() - started) * 1000)
            # The emulator's own CPU per warm invoke (utime + stime), without the control calls.
            cpu_before = _cpu_ms(process.pid)
            for _ in range(100):
                lam.invoke(FunctionName=name, Payload=b"{}")["Payload"].read()
            emulator_cpu_ms = (_cpu_ms(process.pid) - cpu_before) / 100
            timeouts = []
            create_function(lam, "timeout-1s", HANDLER, role, Timeout=1)
            for _ in range(3):
                started = time.perf_counter()
                lam.invoke(FunctionName="timeout-1s", Payload=b'{"sleep": 3}')["Payload"].read()
                timeouts.append(time.perf_counter() - started)
            before = set(descendants(process.pid))
            boto3_cold = []
            for i in range(BOTO3_ENVIRONMENTS):
                create_function(lam, f"boto3-{i}", BOTO3_HANDLER, role)
                started = time.perf_counter()
                lam.invoke(FunctionName=f"boto3-{i}", Payload=b"{}")["Payload"].read()
                boto3_cold.append((time.perf_counter() - started) * 1000)
            boto3_pss = [pss_mb(pid) for pid in set(descendants(process.pid)) - before]
            for i in range(WARM_ENVIRONMENTS - 8 - BOTO3_ENVIRONMENTS):
                name = f"warm-{i}"
                create_function(lam, name, HANDLER, role)
                lam.invoke(FunctionName=name, Payload=b"{}")["Payload"].read()
            workers = descendants(process.pid)
            pss = [pss_mb(pid) for pid in workers]
            started = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
            stop_s = time.perf_counter() - started
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            os.environ.clear()
            os.environ.update(saved)
            boto3.DEFAULT_SESSION = None
    return {
        f"cold start invoke, median of {COLD_FUNCTIONS} (ms)": _p50(cold),
        "warm invoke p50 (ms)": _p50(warm),
        "control GetFunctionConfiguration p50 (ms)": _p50(control),
        "warm invoke / control (ratio)": _p50(warm) / _p50(control),
        "emulator CPU per warm invoke (ms)": emulator_cpu_ms,
        "cold start, handler making a boto3 client (ms)": _p50(boto3_cold),
        "PSS per environment with a boto3 client (MB)": _p50(boto3_pss),
        "Timeout=1 sleeping 3 s: answered after (s)": _p50(timeouts),
        "processes under the emulator at SIGTERM": float(len(workers)),
        "PSS of those, median (MB)": _p50(pss),
        "PSS of those, total (MB)": sum(pss),
        "SIGTERM -> exit (s)": stop_s,
    }


def main() -> None:
    """Measure each root given (default: this repository) and print one table."""
    roots = [Path(arg).resolve() for arg in sys.argv[1:]] or [Path(__file__).parent.parent]
    results = {str(root): measure(root) for root in roots}
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    print(f"{'':<{width}}  " + "  ".join(f"{Path(r).name[:14]:>14}" for r in results))
    for key in keys:
        values = "  ".join(f"{results[r][key]:>14.2f}" for r in results)
        print(f"{key:<{width}}  {values}")


if __name__ == "__main__":
    main()
