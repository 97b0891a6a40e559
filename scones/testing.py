"""The harness the tests and the benchmarks share: real local services on free ports.

`start_local_aws` and `start_local_stack` start the real processes (through `scones.stack`) in
a given folder and return once they answer; `selected_profile` points boto3 at them for a
while. The caller always stops what it started (`scones.stack.stop_process_group`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scones.deploy.iam import policy, trust
from scones.stack import (
    READY_TIMEOUT_S,
    free_port,
    start_service,
    stop_process_group,
    wait_for_file,
    wait_for_health,
)
from scones.workflow_functions import HANDLER, WORKFLOW_FUNCTIONS
from services.local_aws.profile import write_profile
from statemachine.definition import render_for_functions


@dataclass
class LocalAws:
    """A running emulator and the environment (profile) that points boto3 at it."""

    endpoint_url: str
    state_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """The emulator's log so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")

    def session(self) -> Any:
        """A boto3 session selected by this emulator's own profile (no process-wide state)."""
        import boto3
        import botocore.session

        core = botocore.session.Session()
        core.set_config_variable("config_file", self.env["AWS_CONFIG_FILE"])
        core.set_config_variable("credentials_file", self.env["AWS_SHARED_CREDENTIALS_FILE"])
        core.set_config_variable("profile", self.env["AWS_PROFILE"])
        return boto3.session.Session(botocore_session=core)

    def client(self, service: str, config: Any = None) -> Any:
        """A client of `service` on this emulator with the administrator's keys."""
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=config,
        )


def start_local_aws(state_dir: Path, extra_args: list[str] | None = None) -> LocalAws:
    """Start `python -m services.local_aws` on a port it picks; return once healthy."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ready_file = state_dir / "local_aws.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = state_dir / "local_aws.log"
    args = ["--port", "0", "--state-dir", str(state_dir), "--ready-file", str(ready_file)]
    process = start_service("services.local_aws", [*args, *(extra_args or [])], log_path)
    wait_for_file(ready_file, process, log_path, READY_TIMEOUT_S)
    endpoint_url = json.loads(ready_file.read_text())["endpoint_url"]
    try:
        wait_for_health(f"{endpoint_url}/_local_aws/health", process, log_path)
    except Exception:
        stop_process_group(process)
        raise
    env = write_profile(state_dir / "profile", endpoint_url)
    return LocalAws(endpoint_url, state_dir, env, process, log_path)


@dataclass
class LocalStack:
    """The whole embedded stack: emulator + sagemaker-local, and the profile selecting both."""

    aws: LocalAws
    sagemaker_url: str
    sagemaker: subprocess.Popen[bytes]
    env: dict[str, str]
    state_dir: Path

    def stop(self) -> None:
        """Stop sagemaker-local (it flushes data capture), then the emulator."""
        stop_process_group(self.sagemaker, timeout=60)
        stop_process_group(self.aws.process)


def start_local_stack(state_dir: Path) -> LocalStack:
    """Start the emulator (its Lambdas sent to sagemaker-local) and sagemaker-local; wait."""
    sagemaker_port = free_port()
    sagemaker_url = f"http://127.0.0.1:{sagemaker_port}"
    aws = start_local_aws(
        state_dir / "local_aws",
        [
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER={sagemaker_url}",
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sagemaker_url}",
        ],
    )
    env = write_profile(state_dir / "profile", aws.endpoint_url, sagemaker_url)
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    process_env.update(env, SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="1")
    log_path = state_dir / "sagemaker_local.log"
    args = ["--port", str(sagemaker_port), "--state-dir", str(state_dir / "sagemaker_local")]
    sagemaker = start_service("services.sagemaker_local", args, log_path, process_env)
    try:
        wait_for_health(f"{sagemaker_url}/_health", sagemaker, log_path)
    except Exception:
        stop_process_group(sagemaker)
        stop_process_group(aws.process)
        raise
    return LocalStack(aws, sagemaker_url, sagemaker, env, state_dir)


def reset_boto3() -> None:
    """Forget boto3's default session: it caches the config file of the profile it first saw."""
    import boto3

    boto3.DEFAULT_SESSION = None


@contextlib.contextmanager
def selected_profile(env: dict[str, str], hide: tuple[str, ...] = ()) -> Iterator[None]:
    """Select a profile in os.environ (nothing else may steer boto3), then restore everything."""
    saved = {name: os.environ.get(name) for name in env}
    hidden = {
        name: os.environ.pop(name)
        for name in list(os.environ)
        if name.startswith("AWS_ENDPOINT_URL") or name in hide
    }
    os.environ.update(env)
    reset_boto3()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.update(hidden)
        reset_boto3()


class SageMakerRuntimeStandIn:
    """`POST /endpoints/{name}/invocations` on a free port, answering per endpoint name.

    Answers are `(status, headers, body)`; an unknown endpoint gets AWS's ValidationError.
    Every request is recorded as `(endpoint, content_type, accept, body)`.
    """

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str, str, bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                match = re.fullmatch(r"/endpoints/([^/]+)/invocations", self.path)
                name = match.group(1) if match else ""
                stand_in.requests.append(
                    (name, self.headers["Content-Type"], self.headers["Accept"], body)
                )
                status, headers, payload = stand_in.answers.get(name) or error_answer(
                    400, "ValidationError", f"Endpoint {name} of account 123456789012 not found."
                )
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer_json(self, endpoint: str, value: Any) -> None:
        """Let `endpoint` answer 200 with `value` as JSON."""
        headers = {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": "v1"}
        self.answers[endpoint] = (200, headers, json.dumps(value).encode())

    def answer_error(
        self, endpoint: str, status: int, code: str, message: str, **fields: Any
    ) -> None:
        """Let `endpoint` answer with an AWS error."""
        self.answers[endpoint] = error_answer(status, code, message, **fields)

    def __enter__(self) -> SageMakerRuntimeStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def error_answer(
    status: int, code: str, message: str, **fields: Any
) -> tuple[int, dict[str, str], bytes]:
    """An AWS rest-json error response, shaped as SageMaker runtime sends it."""
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal"}
    return status, headers, json.dumps({"Message": message, **fields}).encode()


@dataclass
class Workflow:
    """The workflow created by hand for a test or benchmark: functions, state machine, role."""

    machine_arn: str
    role_arn: str
    functions: dict[str, dict[str, Any]]  # function folder -> CreateFunction's answer


def create_workflow(
    suffix: str,
    bucket: str,
    environments: Mapping[str, Mapping[str, str]],
    timeout_s: int = 30,
) -> Workflow:
    """The three functions (`<folder>-<suffix>`, waited Active) and the state machine over them.

    Not the deploy: one role for all (reading `bucket`, invoking any endpoint and the three
    functions), environments given as they are (e.g. pointing classify at a stand-in
    endpoint), for tests and benchmarks of the functions and the ASL themselves.
    """
    import boto3

    from lambdas.package import build_zip

    iam, lam = boto3.client("iam"), boto3.client("lambda")
    role = iam.create_role(
        RoleName=f"scones-workflow-{suffix}",
        AssumeRolePolicyDocument=trust("lambda.amazonaws.com", "states.amazonaws.com"),
    )["Role"]["Arn"]
    region = lam.meta.region_name
    function_arns = [
        f"arn:aws:lambda:{region}:*:function:{f.folder}-{suffix}" for f in WORKFLOW_FUNCTIONS
    ]
    iam.put_role_policy(
        RoleName=f"scones-workflow-{suffix}",
        PolicyName="permissions",
        PolicyDocument=policy(
            [
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                },
                {"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "*"},
                {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": function_arns},
            ]
        ),
    )
    functions = {}
    for function in WORKFLOW_FUNCTIONS:
        zip_bytes, _ = build_zip(function.folder)
        functions[function.folder] = lam.create_function(
            FunctionName=f"{function.folder}-{suffix}",
            Runtime="python3.11",
            Role=role,
            Handler=HANDLER,
            Code={"ZipFile": zip_bytes},
            Timeout=timeout_s,
            Environment={"Variables": dict(environments.get(function.folder, {}))},
        )
        # A new function is Pending for a moment, as on AWS: invoke it once Active.
        lam.get_waiter("function_active_v2").wait(
            FunctionName=functions[function.folder]["FunctionArn"],
            WaiterConfig={"Delay": 1, "MaxAttempts": 60},
        )
    machine = boto3.client("stepfunctions").create_state_machine(
        name=f"image-classification-{suffix}",
        definition=render_for_functions({f: c["FunctionArn"] for f, c in functions.items()}),
        roleArn=role,
    )["stateMachineArn"]
    return Workflow(machine, role, functions)


def run_execution(
    sfn: Any, machine_arn: str, execution_input: Any, name: str | None = None
) -> dict[str, Any]:
    """Start an execution and wait until it finishes: `finished_execution`."""
    start = {"stateMachineArn": machine_arn, "input": json.dumps(execution_input)}
    if name is not None:
        start["name"] = name
    return finished_execution(sfn, sfn.start_execution(**start)["executionArn"])


def finished_execution(sfn: Any, execution_arn: str) -> dict[str, Any]:
    """Wait (60 s at most) until an execution leaves RUNNING; its description and its events."""
    deadline = time.monotonic() + 60
    while (described := sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "execution did not finish"
        time.sleep(0.02)
    described["events"] = sfn.get_execution_history(executionArn=execution_arn)["events"]
    result: dict[str, Any] = described
    return result


def invoking_role(session: Any, prefix: str) -> str:
    """A role Lambda and Step Functions may assume that may invoke any function; its ARN.

    With IAM enforced, state machines sign their Lambda calls with their role.
    """
    iam = session.client("iam")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    arn: str = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=trust("lambda.amazonaws.com", "states.amazonaws.com"),
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name,
        PolicyName="invoke",
        PolicyDocument=policy(
            [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}]
        ),
    )
    return arn
