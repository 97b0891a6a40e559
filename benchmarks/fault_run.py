"""The fault run: many workflow executions on a fresh embedded stack while its parts are killed.

A fresh stack (emulator + sagemaker-local, `scones.testing.start_local_stack`) gets the real
deploy (`python -m scripts.deploy`, small data). Then N executions (32 in flight) run while,
by the share of executions started:

- ~20 %: one model-server worker process is killed (SIGKILL);
- ~50 %: the emulator is killed (SIGKILL) and restarted on the same port and state folder;
- ~75 %: sagemaker-local is killed (SIGKILL) and restarted on the same port and state folder.

Every execution reads its own PNG (a test image with the execution's id in a tEXt chunk), so a
capture record names the execution it came from: an execution that SUCCEEDED had its
invocation answered, and that answer must have a capture record (lost must be 0). Probes of
the endpoint during recovery carry ids too and are checked the same way.

An execution running when the emulator died comes back FAILED with `Local.EmulatorRestarted`;
the client counts it and starts it again under a new name, as a client of AWS would. The client
retries connection errors with bounded exponential backoff while the emulator is down.

At the end the stack is stopped cleanly and the emulator started alone on its state folder: every
execution must still have the status the client was told. The exit status is 1 when an execution
failed, a capture record is missing, an execution's status changed across that restart, or a
StartExecution/DescribeExecution answer came without its fields (a response cut by the kill).

    python -m benchmarks.fault_run [--executions 1000] [--in-flight 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from PIL import Image, PngImagePlugin

from scones.monitoring import read_capture
from scones.stack import start_service, stop_process_group, wait_for_file, wait_for_health
from scones.testing import LocalStack, selected_profile, start_local_stack
from scones.testing_deploy import deploy_cli
from scones.testing_processes import children, in_group

T = TypeVar("T")

ID_CHUNK = "scones-fault-run-id"
LOST_BY_RESTART = "Local.EmulatorRestarted"
# How long the client keeps retrying one call while a service is down (then it gives up).
CALL_RETRY_BOUND_S = 120.0
POLL_INTERVAL_S = 0.5
EXECUTION_DEADLINE_S = 600.0
MAX_STARTS_PER_EXECUTION = 4
DEPLOY_TIMEOUT_S = 1200
TRANSIENT = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError)


# --- a client that tolerates the emulator being down ---------------------------------------------


@dataclass
class ClientStats:
    """Connection-level retries the client made (the emulator was down or restarting)."""

    retries: int = 0
    gave_up: int = 0
    malformed: list[list[str]] = field(default_factory=list)  # answers' keys
    lock: threading.Lock = field(default_factory=threading.Lock)


def call_with_backoff(stats: ClientStats, call: Callable[[], T]) -> T:
    """`call()`, retried on connection errors and 5xx answers with backoff, bounded in time."""
    deadline = time.monotonic() + CALL_RETRY_BOUND_S
    delay = 0.1
    while True:
        try:
            return call()
        except (*TRANSIENT, ClientError) as error:
            if isinstance(error, ClientError):
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status < 500:
                    raise
            if time.monotonic() + delay > deadline:
                with stats.lock:
                    stats.gave_up += 1
                raise
            with stats.lock:
                stats.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _answer_shape(operation: str, answer: dict[str, Any]) -> list[str]:
    """What a malformed answer looked like: its keys, status and announced length."""
    meta = answer.get("ResponseMetadata", {})
    headers = meta.get("HTTPHeaders", {})
    return [
        operation,
        *sorted(k for k in answer if k != "ResponseMetadata"),
        f"http {meta.get('HTTPStatusCode')}",
        f"content-length {headers.get('content-length')}",
    ]


# --- the stack, killable and restartable -------------------------------------------------------


class FaultStack:
    """The embedded stack of `start_local_stack`, with SIGKILL + restart of each service.

    A restart uses the same ports (the profile and the Lambdas' environment name them), the same
    state folders and the same arguments as `scones.testing.start_local_stack`.
    """

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.aws_port = int(urlsplit(stack.aws.endpoint_url).port or 0)
        self.sagemaker_port = int(urlsplit(stack.sagemaker_url).port or 0)
        self.orphans: list[int] = []  # process groups of killed services, reaped at the end

    @property
    def sagemaker_url(self) -> str:
        """Where sagemaker-local answers."""
        return self.stack.sagemaker_url

    def sagemaker_health(self) -> dict[str, Any]:
        """sagemaker-local's `/_health` document."""
        import urllib.request

        with urllib.request.urlopen(f"{self.sagemaker_url}/_health", timeout=5) as response:
            return dict(json.loads(response.read()))

    def kill_emulator(self) -> None:
        """SIGKILL the emulator's main process (a crash: nothing runs its shutdown)."""
        process = self.stack.aws.process
        self.orphans.append(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def restart_emulator(self) -> None:
        """Start the emulator again on its port and state folder; return once healthy."""
        aws = self.stack.aws
        ready_file = aws.state_dir / "local_aws.ready.json"
        ready_file.unlink(missing_ok=True)
        sagemaker_url = self.sagemaker_url
        args = [
            "--port",
            str(self.aws_port),
            "--state-dir",
            str(aws.state_dir),
            "--ready-file",
            str(ready_file),
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER={sagemaker_url}",
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sagemaker_url}",
        ]
        aws.process = start_service("services.local_aws", args, aws.log_path)
        wait_for_file(ready_file, aws.process, aws.log_path, 120)
        wait_for_health(f"{aws.endpoint_url}/_local_aws/health", aws.process, aws.log_path, 120)

    def kill_sagemaker(self) -> None:
        """SIGKILL sagemaker-local's main process (its model servers die with it)."""
        process = self.stack.sagemaker
        self.orphans.append(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def restart_sagemaker(self) -> None:
        """Start sagemaker-local again on its port and state folder; return once healthy."""
        state_dir = self.stack.state_dir
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        process_env.update(self.stack.env, SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="1")
        log_path = state_dir / "sagemaker_local.log"
        args = [
            "--port",
            str(self.sagemaker_port),
            "--state-dir",
            str(state_dir / "sagemaker_local"),
        ]
        self.stack.sagemaker = start_service(
            "services.sagemaker_local", args, log_path, process_env
        )
        wait_for_health(f"{self.sagemaker_url}/_health", self.stack.sagemaker, log_path, 120)

    def stop(self) -> list[int]:
        """Stop both services, then SIGKILL what is left of the killed ones; pids left over."""
        self.stack.stop()
        survivors = []
        for group in self.orphans:
            members = in_group(group)
            survivors += members
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        return survivors


def cmdline(pid: int) -> str:
    """A process's command line, or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- images that name their execution ----------------------------------------------------------


def tagged_png(image: Image.Image, identity: str) -> bytes:
    """The image as a PNG carrying `identity` in a tEXt chunk (its capture record names it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(ID_CHUNK, identity)
    out = io.BytesIO()
    image.copy().save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def identity_of(data: bytes | None) -> str | None:
    """The identity a tagged PNG carries, or None."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.info.get(ID_CHUNK)  # type: ignore[no-any-return]
    except OSError:
        return None


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one logical execution (re-started after an emulator restart)."""

    identity: str
    name: str = ""  # the execution that counts (the last one started)
    status: str = "NOT_STARTED"
    error: str | None = None
    starts: int = 0
    lost_to_restart: int = 0
    ended_at: float = 0.0


@dataclass
class Fault:
    """One injected fault and how long its service took to come back."""

    name: str
    at_started: int
    at_s: float = 0.0
    detail: str = ""
    service_back_s: float | None = None  # the killed part answers again
    first_success_after_s: float | None = None  # first execution SUCCEEDED after the fault


class FaultRun:
    """The executions, the fault injector and the counters."""

    def __init__(self, stack: FaultStack, deployed: dict[str, Any], args: argparse.Namespace):
        self.stack = stack
        self.deployed = deployed
        self.args = args
        self.stats = ClientStats()
        config = Config(
            max_pool_connections=args.in_flight + 8,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=2,
            read_timeout=30,
        )
        self.sfn = boto3.client("stepfunctions", config=config)
        self.s3 = boto3.client("s3", config=config)
        self.runtime = boto3.client(
            "sagemaker-runtime", config=Config(retries={"max_attempts": 1}, read_timeout=30)
        )
        self.started = 0
        self.counter_lock = threading.Lock()
        self.t0 = 0.0
        self.outcomes: list[Outcome] = []
        self.probe_answers: list[str] = []
        self.probe_errors: Counter[str] = Counter()
        self.faults = [
            Fault("model-server worker SIGKILL", int(0.20 * args.executions)),
            Fault("emulator SIGKILL + restart", int(0.50 * args.executions)),
            Fault("sagemaker-local SIGKILL + restart", int(0.75 * args.executions)),
        ]
        self.base_image: Image.Image | None = None

    # -- inputs
    def prepare_images(self) -> list[str]:
        """Upload one tagged PNG per execution; return their keys."""
        bucket, prefix = self.deployed["bucket"], self.deployed["data_prefix"]
        manifest = self.s3.get_object(Bucket=bucket, Key=f"{prefix}/test/manifest.jsonl")
        entries = [json.loads(line) for line in manifest["Body"].read().decode().splitlines()]
        first = self.s3.get_object(Bucket=bucket, Key=f"{prefix}/test/{entries[0]['key']}")
        self.base_image = Image.open(io.BytesIO(first["Body"].read())).convert("RGB")
        keys = [f"{prefix}/fault-run/{i:05d}.png" for i in range(self.args.executions)]

        # Encoded here, in one thread: PIL's save keeps its options on the image object, so
        # concurrent saves of one image swap their tEXt chunks.
        bodies = [tagged_png(self.base_image, f"exec-{i:05d}") for i in range(len(keys))]
        for index, body in enumerate(bodies):
            if identity_of(body) != f"exec-{index:05d}":
                raise RuntimeError(f"tagged image {index} does not carry its id")

        def put(key_body: tuple[str, bytes]) -> None:
            key, body = key_body
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, zip(keys, bodies, strict=True)))
        return keys

    # -- one execution, re-started when the emulator lost it
    def run_one(self, index: int, key: str) -> Outcome:
        """Start, poll to the end; start again under a new name if the emulator restart lost it."""
        outcome = Outcome(f"exec-{index:05d}")
        with self.counter_lock:
            self.started += 1
        event = json.dumps({"s3_bucket": self.deployed["bucket"], "s3_key": key})
        machine = self.deployed["state_machine_arn"]
        while outcome.starts < MAX_STARTS_PER_EXECUTION:
            name = f"fault-{index:05d}-{outcome.starts}"
            outcome.name = name
            outcome.starts += 1
            try:
                arn = self._start(machine, name, event)
                described = self._wait(arn)
            except (*TRANSIENT, ClientError) as error:
                outcome.status, outcome.error = "CLIENT_ERROR", type(error).__name__
                break
            outcome.status = described["status"]
            outcome.error = described.get("error")
            if outcome.status == "FAILED" and outcome.error == LOST_BY_RESTART:
                outcome.lost_to_restart += 1
                continue
            break
        outcome.ended_at = time.monotonic() - self.t0
        return outcome

    def _start(self, machine: str, name: str, event: str) -> str:
        def start() -> str:
            try:
                answer = self.sfn.start_execution(stateMachineArn=machine, name=name, input=event)
                if "executionArn" not in answer:
                    # A 200 without its body: the emulator killed between headers and body
                    # (before services/local_aws/whole_responses.py). Counted, shown, retried.
                    with self.stats.lock:
                        self.stats.malformed.append(_answer_shape("StartExecution", answer))
                    raise ConnectionClosedError(endpoint_url="StartExecution without executionArn")
                return str(answer["executionArn"])
            except ClientError as error:
                # A retried start whose first try got through (the answer was lost).
                if error.response["Error"]["Code"] != "ExecutionAlreadyExists":
                    raise
                return machine.replace(":stateMachine:", ":execution:") + f":{name}"

        return call_with_backoff(self.stats, start)

    def _wait(self, arn: str) -> dict[str, Any]:
        deadline = time.monotonic() + EXECUTION_DEADLINE_S
        while True:
            described = call_with_backoff(
                self.stats, lambda: self.sfn.describe_execution(executionArn=arn)
            )
            if "status" not in described:
                # As for StartExecution above: counted, shown, polled again.
                with self.stats.lock:
                    self.stats.malformed.append(_answer_shape("DescribeExecution", described))
            elif described["status"] != "RUNNING":
                return dict(described)
            if time.monotonic() > deadline:
                return {"status": "CLIENT_TIMEOUT", "error": "still RUNNING"}
            time.sleep(POLL_INTERVAL_S)

    # -- probes of the endpoint (tagged too: their answers must be captured)
    def probe_endpoint(self, bound_s: float = 180.0) -> float | None:
        """Invoke the endpoint directly until it answers; seconds until then (None: never)."""
        assert self.base_image is not None
        started = time.monotonic()
        while time.monotonic() - started < bound_s:
            identity = f"probe-{len(self.probe_answers) + sum(self.probe_errors.values()):05d}"
            try:
                self.runtime.invoke_endpoint(
                    EndpointName=self.deployed["endpoint"],
                    ContentType="image/png",
                    Accept="application/json",
                    Body=tagged_png(self.base_image, identity),
                )
            except ClientError as error:
                self.probe_errors[error.response["Error"]["Code"]] += 1
            except TRANSIENT as error:
                self.probe_errors[type(error).__name__] += 1
            else:
                self.probe_answers.append(identity)
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    # -- the faults
    def inject(self, fault: Fault) -> None:
        """Inject one fault; measure until its service answers again."""
        fault.at_s = time.monotonic() - self.t0
        began = time.monotonic()
        if fault.name.startswith("model-server"):
            variant = self.stack.sagemaker_health()["endpoints"][self.deployed["endpoint"]]
            server = variant["variants"]["AllTraffic"]["pid"]
            workers = [p for p in children(server) if "worker" in cmdline(p)]
            if not workers:
                workers = children(server)
            if not workers:
                fault.detail = f"no worker process under model server {server}; nothing killed"
                return
            os.kill(workers[0], signal.SIGKILL)
            fault.detail = f"killed worker {workers[0]} of model server {server}"
            back = self.probe_endpoint()
            fault.service_back_s = None if back is None else time.monotonic() - began
        elif fault.name.startswith("emulator"):
            old = self.stack.stack.aws.process.pid
            self.stack.kill_emulator()
            self.stack.restart_emulator()
            fault.service_back_s = time.monotonic() - began
            fault.detail = f"killed {old}, restarted as {self.stack.stack.aws.process.pid}"
        else:
            old = self.stack.stack.sagemaker.pid
            self.stack.kill_sagemaker()
            self.stack.restart_sagemaker()
            healthy = time.monotonic() - began
            back = self.probe_endpoint()
            fault.service_back_s = None if back is None else time.monotonic() - began
            fault.detail = (
                f"killed {old}, restarted as {self.stack.stack.sagemaker.pid}; "
                f"/_health after {healthy:.1f}s"
            )

    def injector(self, stop: threading.Event) -> None:
        """Fire each fault once the started-execution count reaches its share."""
        for fault in self.faults:
            while not stop.is_set() and self.started < fault.at_started:
                time.sleep(0.05)
            if stop.is_set():
                return
            self.inject(fault)
            print(f"  fault at {fault.at_s:6.1f}s: {fault.name}: {fault.detail}", flush=True)

    def run(self, keys: list[str]) -> float:
        """All executions with the injector alongside; wall seconds."""
        self.t0 = time.monotonic()
        stop = threading.Event()
        injector = threading.Thread(target=self.injector, args=(stop,), daemon=True)
        injector.start()
        try:
            with ThreadPoolExecutor(self.args.in_flight) as pool:
                self.outcomes = list(pool.map(self.run_one, range(len(keys)), keys))
        finally:
            stop.set()
            injector.join(timeout=600)
        wall = time.monotonic() - self.t0
        for fault in self.faults:
            after = [
                o.ended_at
                for o in self.outcomes
                if o.status == "SUCCEEDED" and o.ended_at > fault.at_s
            ]
            if after:
                fault.first_success_after_s = min(after) - fault.at_s
        return wall

    # -- the capture check
    def capture_check(self, wait_s: float) -> dict[str, Any]:
        """Records by identity vs answered invocations, waiting for the spool to ship."""
        bucket = self.deployed["bucket"]
        capture_uri = self.deployed["capture_uri"]
        prefix = capture_uri.split("/", 3)[3]
        answered = {o.identity for o in self.outcomes if o.status == "SUCCEEDED"}
        answered |= set(self.probe_answers)
        cache: dict[str, Any] = {}
        deadline = time.monotonic() + wait_s
        while True:
            read = read_capture(bucket, prefix, self.deployed["endpoint"], s3=self.s3, cache=cache)
            seen = Counter(identity_of(r.input_data) for r in read.records)
            missing = answered - set(seen)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        return {
            "capture_records": len(read.records),
            "capture_files": read.files,
            "answered_invocations_known": len(answered),
            "lost_capture_records": len(missing),
            "lost_examples": sorted(missing)[:10],
            "records_without_an_id": seen.get(None, 0),
            "ids_with_more_than_one_record": sum(1 for k, v in seen.items() if k and v > 1),
            "records_of_unfinished_executions": sum(
                v for k, v in seen.items() if k and k not in answered
            ),
        }


def durability_check(stack: FaultStack, run: FaultRun) -> dict[str, Any]:
    """After a clean stop, restart the emulator alone: does it tell what the client was told?"""
    stack.restart_emulator()
    try:
        with selected_profile(stack.stack.env):
            sfn = boto3.client("stepfunctions", config=Config(max_pool_connections=16))
            machine = run.deployed["state_machine_arn"]
            prefix = machine.replace(":stateMachine:", ":execution:")

            def now(outcome: Outcome) -> tuple[str, str | None]:
                described = sfn.describe_execution(executionArn=f"{prefix}:{outcome.name}")
                return described["status"], described.get("error")

            seen = [o for o in run.outcomes if o.name]
            with ThreadPoolExecutor(8) as pool:
                after = list(pool.map(now, seen))
    finally:
        stop_process_group(stack.stack.aws.process)
    changed = Counter(
        f"{o.status}->{status}/{error}"
        for o, (status, error) in zip(seen, after, strict=True)
        if (o.status, o.error) != (status, error)
    )
    return {
        "executions_checked": len(seen),
        "status_changed_after_restart": sum(changed.values()),
        "changes": dict(changed),
    }


def deploy(stack: LocalStack, state_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The real deploy CLI in a subprocess, as a user runs it against the profile."""
    sizes = f"--rows-train {args.rows_train} --rows-test {args.rows_test} --epochs 1".split()
    # Every 2-class inference passes the filter: a failed execution is then a fault's doing.
    result = deploy_cli(sizes, stack.env, state_dir, DEPLOY_TIMEOUT_S, SCONES_THRESHOLD="0.5")
    if result.returncode != 0:
        raise RuntimeError(f"deploy failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return dict(json.loads((state_dir / "deploy.json").read_text()))


def report(run: FaultRun, wall_s: float, capture: dict[str, Any], leftovers: list[int]) -> dict:
    """The figures, as a JSON-ready dict."""
    outcomes = run.outcomes
    by_error = Counter(o.error or "?" for o in outcomes if o.status != "SUCCEEDED")
    return {
        "executions": len(outcomes),
        "in_flight": run.args.in_flight,
        "wall_s": round(wall_s, 1),
        "executions_started_total": sum(o.starts for o in outcomes),
        "succeeded": sum(o.status == "SUCCEEDED" for o in outcomes),
        "failed": sum(o.status != "SUCCEEDED" for o in outcomes),
        "failed_by_error": dict(by_error),
        "lost_to_emulator_restart": sum(o.lost_to_restart for o in outcomes),
        "restarted_executions_succeeded": sum(
            o.lost_to_restart > 0 and o.status == "SUCCEEDED" for o in outcomes
        ),
        "client_connection_retries": run.stats.retries,
        "client_calls_given_up": run.stats.gave_up,
        "answers_missing_fields": len(run.stats.malformed),
        "answers_missing_fields_examples": run.stats.malformed[:5],
        "probe_answers": len(run.probe_answers),
        "probe_errors": dict(run.probe_errors),
        "faults": [
            {
                "fault": f.name,
                "at_started_executions": f.at_started,
                "at_s": round(f.at_s, 1),
                "service_back_s": None if f.service_back_s is None else round(f.service_back_s, 2),
                "first_success_after_s": None
                if f.first_success_after_s is None
                else round(f.first_success_after_s, 2),
                "detail": f.detail,
            }
            for f in run.faults
        ],
        "capture": capture,
        "processes_left_by_killed_services": leftovers,
    }


def print_report(figures: dict[str, Any]) -> None:
    """The human summary."""
    print(
        f"\nexecutions {figures['executions']} ({figures['in_flight']} in flight) in "
        f"{figures['wall_s']} s; StartExecution calls {figures['executions_started_total']}"
    )
    print(f"  succeeded {figures['succeeded']}, failed {figures['failed']}")
    for error, count in figures["failed_by_error"].items():
        print(f"    {error}: {count}")
    print(
        f"  lost to the emulator restart ({LOST_BY_RESTART}): "
        f"{figures['lost_to_emulator_restart']}, re-started and then succeeded: "
        f"{figures['restarted_executions_succeeded']}"
    )
    print(
        f"  client: {figures['client_connection_retries']} connection retries, "
        f"{figures['client_calls_given_up']} calls given up"
    )
    print(
        f"  Start/DescribeExecution answers missing their fields: "
        f"{figures['answers_missing_fields']} {figures['answers_missing_fields_examples']}"
    )
    print(
        f"  endpoint probes: {figures['probe_answers']} answered, errors {figures['probe_errors']}"
    )
    print("faults (service back = the killed part answers again; first success = workflow):")
    for fault in figures["faults"]:
        print(
            f"  {fault['fault']:<36} at {fault['at_s']:6.1f}s  service back "
            f"{fault['service_back_s']} s  first success after {fault['first_success_after_s']} s"
        )
    capture = figures["capture"]
    print(
        f"capture: {capture['capture_records']} records in {capture['capture_files']} files for "
        f"{capture['answered_invocations_known']} answered invocations known to the client; "
        f"LOST {capture['lost_capture_records']} {capture['lost_examples']}"
    )
    print(
        f"  records of executions that did not succeed: "
        f"{capture['records_of_unfinished_executions']}; ids with >1 record: "
        f"{capture['ids_with_more_than_one_record']}; without id: "
        f"{capture['records_without_an_id']}"
    )
    if figures["processes_left_by_killed_services"]:
        print(
            "processes left behind by killed services:",
            figures["processes_left_by_killed_services"],
        )


def main(argv: list[str] | None = None) -> int:
    """Start, deploy, run with faults, report. Exit 1 when a capture record or execution is lost."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fault_run", description=__doc__)
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rows-train", type=int, default=2000)
    parser.add_argument("--rows-test", type=int, default=500)
    parser.add_argument("--capture-wait", type=float, default=90.0, help="seconds for the spool")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's state here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        if args.state_dir is None:
            args.state_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        started = time.monotonic()
        stack = FaultStack(start_local_stack(args.state_dir / "stack"))
        leftovers: list[int] = []
        try:
            with selected_profile(stack.stack.env):
                print(f"stack up in {time.monotonic() - started:.1f}s; deploying", flush=True)
                started = time.monotonic()
                deployed = deploy(stack.stack, args.state_dir / "deploy", args)
                print(f"deployed in {time.monotonic() - started:.1f}s", flush=True)
                run = FaultRun(stack, deployed, args)
                keys = run.prepare_images()
                print(f"{len(keys)} tagged images uploaded; running", flush=True)
                wall = run.run(keys)
                capture = run.capture_check(args.capture_wait)
        finally:
            leftovers = stack.stop()
        durability = durability_check(stack, run)
    figures = report(run, wall, capture, leftovers)
    figures["after_clean_restart"] = durability
    print_report(figures)
    print(
        f"after a clean stop and an emulator restart: {durability['executions_checked']} "
        f"executions checked, {durability['status_changed_after_restart']} changed status "
        f"{durability['changes']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    lost = capture["lost_capture_records"] + durability["status_changed_after_restart"]
    malformed = len(run.stats.malformed)  # a 200 without its body (a kill mid-response)
    return 0 if figures["failed"] == 0 and lost == 0 and malformed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
