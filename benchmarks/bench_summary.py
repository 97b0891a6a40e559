"""`make bench`'s summary: issue 15's goals, measured in one run, with the peer side by side.

Two emulators are measured in interleaved rounds on the same machine: `local_aws` (this
repository's `services.local_aws`) and the peer `ministack` (pinned in
benchmarks/requirements-bench-peer.lock, installed by this script in its own venv,
.venv-bench-peer, and started and stopped here on a free port). Per round each is started, its
spawn -> ready, PSS and first answer (ready + an S3 ListBuckets: lazy loading moves work to it)
taken, a function cold-started and invoked warm, a three-task state machine run sequentially
and 16 in flight; ours is then restarted on that state. Medians over the rounds are reported.
Once per emulator (the costly part) ~100 functions are warmed: PSS per extra environment, then
SIGTERM -> exit. The stack rows (emulator + sagemaker-local + one model server, model-server
worker PSS and start -> /ping, InvokeEndpoint vs raw batched) have no peer: ministack has no
SageMaker hosting.

    python -m benchmarks.bench_summary [--rounds 3] [--environments 100] [--no-peer]
        [--no-stack] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from scones.deploy.iam import policy, trust
from scones.stack import free_port, start_service, stop_process_group
from scones.testing import reset_boto3, tasks_in_a_row
from scones.testing_processes import descendants, pss_mb, tree_pss_mb
from services.local_aws.profile import write_profile
from services.service_process import spawn_logged

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER = "ministack"
PEER_LOCK = REPO_ROOT / "benchmarks" / "requirements-bench-peer.lock"
PEER_VENV = Path(os.environ.get("BENCH_PEER_VENV", REPO_ROOT / ".venv-bench-peer"))
LOCAL = "local_aws"
HANDLER = "def handler(event, context):\n    return {'echo': event.get('n')}\n"
READY_POLL_S = 0.005  # spawn -> ready is ~0.1-1 s: poll finely, both emulators alike
READY_TIMEOUT_S = 120.0
EXECUTION_TIMEOUT_S = 120.0


# --- measuring helpers ---------------------------------------------------------------------


def median(samples: list[float]) -> float:
    """The median, NaN for no samples."""
    return statistics.median(samples) if samples else float("nan")


def _zip(source: str = HANDLER) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", source)
    return buffer.getvalue()


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# --- the emulators -------------------------------------------------------------------------


@dataclass
class Emulator:
    """A started emulator: its process, boto3 session and spawn -> ready time."""

    name: str
    process: subprocess.Popen[bytes]
    session: boto3.session.Session
    endpoint_url: str | None  # given to each client (ministack); None: the profile says (ours)
    ready_s: float
    log_path: Path

    def client(self, service: str) -> Any:
        """A boto3 client for this emulator (a pool large enough for 16 in flight)."""
        config = Config(max_pool_connections=32, retries={"total_max_attempts": 1})
        return self.session.client(service, endpoint_url=self.endpoint_url, config=config)

    def stop(self) -> float:
        """SIGTERM; seconds until the main process exited. Leftovers of its group are killed."""
        started = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=120)
        stop_s = time.perf_counter() - started
        stop_process_group(self.process)  # workers left behind must not outlive the bench
        return stop_s


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, t0: float) -> float:
    deadline = t0 + READY_TIMEOUT_S
    while not _get_ok(url):
        if process.poll() is not None or time.perf_counter() > deadline:
            stop_process_group(process)
            raise RuntimeError(f"{process.args!r} not ready:\n{log_path.read_text()[-2000:]}")
        time.sleep(READY_POLL_S)
    return time.perf_counter() - t0


def start_local(state: Path, max_environments: int) -> Emulator:
    """`python -m services.local_aws` as `make up` starts it (persistence and IAM on)."""
    port = free_port()
    log_path = state / "local_aws.log"
    env = {**os.environ, "LOCAL_AWS_LAMBDA_MAX_ENVIRONMENTS": str(max_environments)}
    args = ["--port", str(port), "--state-dir", str(state), "--log-level", "WARNING"]
    t0 = time.perf_counter()
    process = start_service("services.local_aws", args, log_path, env)
    url = f"http://127.0.0.1:{port}"
    ready_s = _wait_ready(process, f"{url}/_local_aws/health", log_path, t0)
    profile = write_profile(state / "profile", url)
    session = boto3.session.Session(
        profile_name=profile["AWS_PROFILE"],
        botocore_session=_botocore_session(profile),
    )
    return Emulator(LOCAL, process, session, None, ready_s, log_path)


def _botocore_session(profile: dict[str, str]) -> Any:
    import botocore.session

    session = botocore.session.Session()
    session.set_config_variable("config_file", profile["AWS_CONFIG_FILE"])
    session.set_config_variable("credentials_file", profile["AWS_SHARED_CREDENTIALS_FILE"])
    return session


def ensure_peer_venv() -> Path:
    """The peer's venv from its lock file (created once, reinstalled when the lock changes)."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    digest = hashlib.sha256(PEER_LOCK.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"creating {PEER_VENV} ({PEER} pinned by {PEER_LOCK.name}) ...", flush=True)
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(PEER_LOCK),
        ],
        check=True,
    )
    stamp.write_text(digest)
    return python


def start_peer(python: Path, state: Path) -> Emulator:
    """`python -m ministack` in the foreground on a free port, its files under `state`."""
    port = free_port()
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "ministack.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state),
        "TMPDIR": str(state),  # its pid file and Lambda worker folders
        "GATEWAY_PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "S3_DATA_DIR": str(state / "s3"),
    }
    t0 = time.perf_counter()
    log_path.unlink(missing_ok=True)  # this run's log only
    process = spawn_logged([str(python), "-m", "ministack"], log_path, state, env)
    url = f"http://127.0.0.1:{port}"
    ready_s = _wait_ready(process, f"{url}/_ministack/health", log_path, t0)
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    return Emulator(PEER, process, session, url, ready_s, log_path)


# --- what one emulator measures ----------------------------------------------------------------


@dataclass
class Sizes:
    """How much each round does."""

    cold: int = 3
    warm: int = 100
    sequential: int = 20
    concurrent: int = 64
    in_flight: int = 16
    environments: int = 100


@dataclass
class Figures:
    """One emulator's samples, one value per round (or one for the once-only rows)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        """Record a sample."""
        self.values.setdefault(key, []).append(value)


class Workload:
    """The functions and the state machine created in one emulator."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.lam = emulator.client("lambda")
        self.sfn = emulator.client("stepfunctions")
        iam = emulator.client("iam")
        role_name = f"bench-{uuid.uuid4().hex[:8]}"
        self.role = iam.create_role(
            RoleName=role_name,
            AssumeRolePolicyDocument=trust("lambda.amazonaws.com", "states.amazonaws.com"),
        )["Role"]["Arn"]
        # The state machine invokes the functions with this role, as on AWS.
        statement = {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}
        iam.put_role_policy(
            RoleName=role_name, PolicyName="invoke", PolicyDocument=policy([statement])
        )

    def create(self, name: str) -> str:
        """A python3.11 echo function, waited Active; its ARN."""
        arn = self.lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=self.role,
            Handler="app.handler",
            Code={"ZipFile": _zip()},
        )["FunctionArn"]
        # Pending for a moment after CreateFunction, as on AWS. Polled finely: boto3's waiter
        # sleeps whole seconds, which would make warming ~100 functions take minutes.
        deadline = time.perf_counter() + 60
        while (state := self.lam.get_function_configuration(FunctionName=name)["State"]) in (
            "Pending",
        ):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.emulator.name}: {name} still Pending")
            time.sleep(0.02)
        if state != "Active":
            raise RuntimeError(f"{self.emulator.name}: {name} is {state}")
        return str(arn)

    def invoke_ms(self, name: str, n: int = 0) -> float:
        """One synchronous invoke, checked; milliseconds."""
        started = time.perf_counter()
        answer = self.lam.invoke(FunctionName=name, Payload=json.dumps({"n": n}).encode())
        body = json.loads(answer["Payload"].read())
        elapsed = (time.perf_counter() - started) * 1000
        if answer.get("FunctionError") or body != {"echo": n}:
            raise RuntimeError(f"{self.emulator.name}: {name} answered {body!r}")
        return elapsed

    def machine(self, function_arn: str) -> str:
        """Three Lambda tasks in a row, the shape of the project's workflow."""
        return str(
            self.sfn.create_state_machine(
                name=f"bench-{uuid.uuid4().hex[:8]}",
                definition=json.dumps(tasks_in_a_row(function_arn)),
                roleArn=self.role,
            )["stateMachineArn"]
        )

    def execution_ms(self, machine: str) -> float:
        """Start one execution, poll it to SUCCEEDED; client-observed milliseconds."""
        started = time.perf_counter()
        arn = self.sfn.start_execution(stateMachineArn=machine, input='{"n": 7}')["executionArn"]
        delay = 0.002
        while True:
            time.sleep(delay)
            described = self.sfn.describe_execution(executionArn=arn)
            if described["status"] != "RUNNING":
                break
            if time.perf_counter() - started > EXECUTION_TIMEOUT_S:
                raise TimeoutError(f"{self.emulator.name}: {arn} still RUNNING")
            delay = min(0.01, delay * 1.5)
        if described["status"] != "SUCCEEDED":
            cause = f"{described.get('error')}: {described.get('cause', '')[:500]}"
            raise RuntimeError(f"{self.emulator.name}: execution {described['status']}: {cause}")
        return (time.perf_counter() - started) * 1000


def measure_round(emulator: Emulator, sizes: Sizes, figures: Figures, heavy: bool) -> None:
    """Everything but start/stop on a fresh emulator; `heavy` adds the warm-environment rows."""
    figures.add("ready_s", emulator.ready_s)
    figures.add("pss_fresh_mb", pss_mb(emulator.process.pid))
    # Lazy loading moves work from start-up to the first request: count both.
    s3 = emulator.client("s3")
    started = time.perf_counter()
    s3.list_buckets()
    figures.add("first_answer_s", emulator.ready_s + time.perf_counter() - started)
    work = Workload(emulator)
    cold = []
    for i in range(sizes.cold):
        name = f"cold-{i}"
        arn = work.create(name)
        cold.append(work.invoke_ms(name))
    figures.add("cold_ms", median(cold))
    warm = [work.invoke_ms(name, i) for i in range(sizes.warm)]
    figures.add("warm_p50_ms", median(warm))
    machine = work.machine(arn)
    work.execution_ms(machine)  # the machine's first run is not the steady state
    figures.add("sfn_p50_ms", median([work.execution_ms(machine) for _ in range(sizes.sequential)]))
    with ThreadPoolExecutor(sizes.in_flight) as pool:
        list(pool.map(lambda _: work.execution_ms(machine), range(sizes.in_flight)))  # warm
        started = time.perf_counter()
        list(pool.map(lambda _: work.execution_ms(machine), range(sizes.concurrent)))
        figures.add("exec_per_s", sizes.concurrent / (time.perf_counter() - started))
    if heavy:
        _warm_environments(work, sizes, figures)


def measure_restart(state: Path, max_environments: int, figures: Figures) -> None:
    """Started again on what a round left (functions, a state machine, its executions)."""
    emulator = start_local(state, max_environments)
    try:
        figures.add("restart_ready_s", emulator.ready_s)
        figures.add("restart_pss_mb", pss_mb(emulator.process.pid))
    finally:
        emulator.stop()


def _warm_environments(work: Workload, sizes: Sizes, figures: Figures) -> None:
    """~N functions warmed (one environment each): PSS per extra one; then SIGTERM -> exit."""
    pid = work.emulator.process.pid
    work.create("env-0")
    work.invoke_ms("env-0")
    before = tree_pss_mb(pid)
    extra = max(1, sizes.environments - sizes.cold - 1)

    def warm_one(i: int) -> None:
        work.create(f"env-{i}")
        work.invoke_ms(f"env-{i}")

    with ThreadPoolExecutor(8) as pool:  # a few at a time: warming is not what is measured
        list(pool.map(warm_one, range(1, extra + 1)))
    figures.add("pss_per_env_mb", (tree_pss_mb(pid) - before) / extra)
    figures.add("warm_environments", float(len(descendants(pid))))
    figures.add("stop_s", work.emulator.stop())


# --- the stack (ours only: the peer has no SageMaker hosting) ----------------------------------


def measure_stack(rounds: int, requests: int, figures: Figures) -> None:
    """Whole stack at rest, model-server worker PSS and start -> /ping, InvokeEndpoint share."""
    from benchmarks.bench_serving import (
        INVOKE_ENDPOINT,
        SAGEMAKER_LOCAL_SIGNED,
        EndpointStack,
        RawRunner,
        ServerProcess,
        boto3_request_headers,
        container_environment,
        http_rows,
        invoke_rows,
        png_32x32,
        write_small_cnn,
    )
    from services.model_server.environment import ensure_serving_env

    ensure_serving_env()  # the image's packages (CPU-only torch): what endpoints serve with
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = write_small_cnn(Path(scratch))
        payload = png_32x32()
        for index in range(rounds):
            figures.add("stack_up_s", _make_up_s(Path(scratch) / f"up-{index}"))
        server_args = ["--workers", "1", "--threads-per-worker", "1", "--max-batch-size", "8"]
        for _ in range(rounds):
            started = time.perf_counter()
            with ServerProcess(model_dir, server_args) as server:
                figures.add("ping_s", time.perf_counter() - started)
                workers = descendants(server.process.pid)
                figures.add("worker_pss_mb", max((pss_mb(p) for p in workers), default=0.0))
        raw = RawRunner(model_dir, payload, 8, 1)
        environment = container_environment(1, 1, 8, 0.0)
        with EndpointStack(Path(scratch) / "stack", model_dir, environment, False, 32) as stack:
            time.sleep(2)  # "at rest": let the deploy's requests and the first capture flush end
            aws, sagemaker = stack.aws_pid, stack.sagemaker_pid
            figures.add("stack_pss_mb", tree_pss_mb(aws) + tree_pss_mb(sagemaker))
            stack.check(payload)
            endpoint = stack.endpoints[INVOKE_ENDPOINT]
            calls = [_endpoint_call(runtime, endpoint) for runtime in stack.runtimes]
            # boto3's own signed request replayed without boto3: the server side alone.
            signed = boto3_request_headers(stack.runtimes[0], endpoint, payload)
            path = f"/endpoints/{endpoint}/invocations"
            url = stack.sagemaker_url
            for _ in range(rounds):  # interleaved: raw, then through the endpoint
                batched = raw.batched(requests)
                (through,) = invoke_rows(INVOKE_ENDPOINT, calls, payload, [32], requests)
                figures.add("invoke_share", through.req_per_s / batched.req_per_s)
                figures.add("boto3_cpu_ms", through.bench_cpu_ms or 0.0)
                (replayed,) = http_rows(
                    SAGEMAKER_LOCAL_SIGNED, url, payload, [32], requests, path, signed
                )
                figures.add("invoke_server_share", replayed.req_per_s / batched.req_per_s)


def _make_up_s(state_dir: Path) -> float:
    """`make up DEPLOY=0`'s own code (scones.stack.up) on free ports; seconds until healthy."""
    from scones import stack
    from scones.settings import Settings

    aws_port = free_port()
    sagemaker_port = next(p for p in iter(free_port, None) if p != aws_port)
    settings = Settings(
        state_dir=state_dir, local_aws_port=aws_port, sagemaker_local_port=sagemaker_port
    )
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        try:
            stack.up(settings)
            return time.perf_counter() - started
        finally:
            stack.down(settings)


def _endpoint_call(runtime: Any, endpoint: str) -> Callable[[bytes], bytes]:
    def call(body: bytes) -> bytes:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="image/png", Accept="application/json", Body=body
        )
        return bytes(answer["Body"].read())

    return call


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One row: the figure, how it is shown, and the issue's target."""

    key: str
    title: str
    unit: str
    target: str
    met: Callable[[float], bool]
    digits: int = 1


GOALS = (
    Goal("ready_s", "emulator spawn -> ready", "s", "<= 0.3 s", lambda v: v <= 0.3, 2),
    Goal(
        "first_answer_s",
        "  spawn -> ready + first S3 ListBuckets answered",
        "s",
        "(report)",
        lambda v: True,
        2,
    ),
    Goal(
        "stack_up_s",
        "services up: emulator + sagemaker-local healthy (make up DEPLOY=0)",
        "s",
        "<= 1.5 s",
        lambda v: v <= 1.5,
        2,
    ),
    Goal("pss_fresh_mb", "emulator PSS, fresh", "MB", "<= 60 MB", lambda v: v <= 60, 0),
    Goal(
        "restart_ready_s",
        "emulator restart on a round's state (functions, machine, executions) -> ready",
        "s",
        "(report)",
        lambda v: True,
        2,
    ),
    Goal("restart_pss_mb", "  PSS after that restart", "MB", "(report)", lambda v: True, 0),
    Goal(
        "stack_pss_mb",
        "whole stack at rest PSS (emulator, sagemaker-local, 1 model server)",
        "MB",
        "<= 400 MB",
        lambda v: v <= 400,
        0,
    ),
    Goal(
        "pss_per_env_mb",
        "PSS per extra warm Lambda environment",
        "MB",
        "<= 8 MB",
        lambda v: v <= 8,
    ),
    Goal(
        "cold_ms",
        "cold start (first invoke of a new function)",
        "ms",
        "<= 10 ms",
        lambda v: v <= 10,
    ),
    Goal("warm_p50_ms", "warm invoke p50", "ms", "(report)", lambda v: True, 2),
    Goal(
        "sfn_p50_ms",
        "SFN execution p50, sequential (3 Lambda tasks)",
        "ms",
        "(report)",
        lambda v: True,
    ),
    Goal("exec_per_s", "executions/s, 16 in flight", "/s", "(report)", lambda v: True),
    Goal(
        "warm_environments",
        "  processes under the emulator at SIGTERM",
        "",
        "~100",
        lambda v: True,
        0,
    ),
    Goal("stop_s", "SIGTERM -> exit with those warm", "s", "<= 1 s", lambda v: v <= 1, 2),
    Goal("worker_pss_mb", "model-server worker PSS", "MB", "<= 300 MB", lambda v: v <= 300, 0),
    Goal("ping_s", "model server start -> /ping 200", "s", "<= 2 s", lambda v: v <= 2, 2),
    Goal(
        "invoke_share",
        "InvokeEndpoint / raw batched throughput, 32 clients",
        "%",
        ">= 70 %",
        lambda v: v >= 0.7,
    ),
    Goal(
        "invoke_server_share",
        "  server side alone: boto3's signed request replayed without boto3 / raw",
        "%",
        "(report)",
        lambda v: True,
    ),
    Goal(
        "boto3_cpu_ms",
        "  boto3's client CPU per InvokeEndpoint (on the servers' CPUs)",
        "ms",
        "(report)",
        lambda v: True,
        2,
    ),
    # benchmarks/bench_burst.py: a fresh stack, the real deploy, then the burst at once.
    Goal("burst_p99_over_p50", "burst: p99 / p50, 600 executions, 32 in flight", "", "<= 3",
         lambda v: v <= 3, 2),
    Goal("burst_p99_ms", "  burst: latency p99", "ms", "(report)", lambda v: True, 0),
    Goal("burst_exec_per_s", "  burst: executions/s", "/s", ">= 69.2/s (2x 34.6)",
         lambda v: v >= 69.2),
    Goal("burst_cpu_ms", "  burst: emulator CPU ms per execution", "ms", "(report)",
         lambda v: True),
    Goal("burst_failed", "  burst: executions not SUCCEEDED", "", "== 0", lambda v: v == 0, 0),
)  # fmt: skip


# What each emulator's rounds measure (`--no-stack` measures exactly these); the rest of GOALS
# needs the whole stack or the burst.
EMULATOR_ROWS = frozenset(
    {
        "ready_s",
        "first_answer_s",
        "pss_fresh_mb",
        "restart_ready_s",
        "restart_pss_mb",
        "pss_per_env_mb",
        "cold_ms",
        "warm_p50_ms",
        "sfn_p50_ms",
        "exec_per_s",
        "warm_environments",
        "stop_s",
    }
)


def _shown(goal: Goal, samples: list[float] | None) -> str:
    if not samples:
        return "n/a"
    value = median(samples)
    if goal.unit == "%":
        return f"{value:.0%}"
    return f"{value:.{goal.digits}f} {goal.unit}".rstrip()


def _verdict(goal: Goal, samples: list[float] | None) -> str:
    if not samples or goal.target.startswith(("(", "~")):
        return ""
    return "met" if goal.met(median(samples)) else "NOT met"


def _ratio(ours: list[float] | None, theirs: list[float] | None) -> str:
    if not ours or not theirs or 0 in theirs:
        return ""
    if len(ours) == len(theirs):  # round by round: both ran back to back under the same load
        return f"{median([a / b for a, b in zip(ours, theirs, strict=True)]):.2f}x"
    return f"{median(ours) / median(theirs):.2f}x"


def table(results: dict[str, Figures]) -> str:
    """The summary as a Markdown table: one row per goal, one column per emulator."""
    names = list(results)
    compared = PEER in names
    columns = [*names, *([f"{LOCAL} / {PEER}"] if compared else [])]
    lines = [
        "| goal | target | " + " | ".join(columns) + f" | {LOCAL} vs target | n |",
        "|---|---|" + "---:|" * len(columns) + "---|---:|",
    ]
    for goal in GOALS:
        samples = {name: results[name].values.get(goal.key) for name in names}
        ours = samples.get(LOCAL)
        cells = " | ".join(_shown(goal, samples[name]) for name in names)
        if compared:
            cells += f" | {_ratio(samples.get(LOCAL), samples.get(PEER))}"
        count = len(ours) if ours else 0
        lines.append(
            f"| {goal.title} | {goal.target} | {cells} | {_verdict(goal, ours)} | {count} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _no_aws_environment() -> Iterator[None]:
    """Nothing in os.environ may steer the sessions built here (each names its emulator)."""
    hidden = {
        name: os.environ.pop(name)
        for name in list(os.environ)
        if name.startswith("AWS_") and name != "AWS_DATA_PATH"
    }
    reset_boto3()
    try:
        yield
    finally:
        os.environ.update(hidden)
        reset_boto3()


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table (and write JSON when asked)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_summary")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians count")
    parser.add_argument("--environments", type=int, default=100, help="warm ones at SIGTERM")
    parser.add_argument("--warm", type=int, default=100, help="warm invokes per round")
    parser.add_argument("--sequential", type=int, default=20, help="sequential executions")
    parser.add_argument("--concurrent", type=int, default=64, help="executions, 16 in flight")
    parser.add_argument("--requests", type=int, default=320, help="per serving row and round")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip ministack")
    parser.add_argument("--no-stack", dest="stack", action="store_false", help="skip stack rows")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args(argv)
    sizes = Sizes(
        warm=args.warm,
        sequential=args.sequential,
        concurrent=args.concurrent,
        environments=args.environments,
    )
    peer_python = ensure_peer_venv() if args.peer else None
    results = {LOCAL: Figures(), **({PEER: Figures()} if peer_python else {})}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with _no_aws_environment(), tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            order = list(results) if index % 2 == 0 else list(reversed(results))
            for name in order:  # alternating who goes first: drift in load hits both alike
                state = Path(scratch) / f"{name}-{index}"
                if name == LOCAL:
                    emulator = start_local(state, args.environments + 16)
                else:
                    assert peer_python is not None
                    emulator = start_peer(peer_python, state)
                try:
                    measure_round(emulator, sizes, results[name], heavy=index == 0)
                finally:
                    emulator.stop()
                if name == LOCAL:  # the peer keeps no Lambda or Step Functions state
                    measure_restart(state, args.environments + 16, results[name])
                print(f"  round {index + 1}/{args.rounds} {name}: done", flush=True)
        if args.stack:
            measure_stack(args.rounds, args.requests, results[LOCAL])
            print("  stack: done", flush=True)
            from benchmarks.bench_burst import summary_rows  # S: the burst rows

            for key, value in summary_rows(600, 32).items():
                results[LOCAL].add(key, value)
            print("  burst: done", flush=True)
    print(
        f"\nissue 15 summary: {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, {time.monotonic() - started:.0f} s; medians of "
        f"{args.rounds} interleaved rounds (n = samples; warm environments and stop: round 1)"
    )
    if peer_python:
        print(f"peer: {PEER} as pinned in {PEER_LOCK.relative_to(REPO_ROOT)} ({PEER_VENV.name})")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({n: f.values for n, f in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
