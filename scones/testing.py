"""The harness the tests and the benchmarks share: real local services on free ports.

`start_local_aws` and `start_local_stack` start the real processes (through `scones.stack`) in
a given folder and return once they answer; `selected_profile` points boto3 at them for a
while. The caller always stops what it started (`scones.stack.stop_process_group`).
Beside it: `testing_functions` (Lambdas from source), `testing_models` (tiny models),
`testing_sagemaker` (a runtime stand-in, AWS's capture format), `testing_deploy` (a small deploy).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
from scones.testing_functions import create_function
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


def start_local_aws(
    state_dir: Path,
    extra_args: list[str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> LocalAws:
    """Start `python -m services.local_aws` on a port it picks; return once healthy.

    `environment`: variables set for the emulator on top of this process's (e.g. its knobs).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    ready_file = state_dir / "local_aws.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = state_dir / "local_aws.log"
    args = ["--port", "0", "--state-dir", str(state_dir), "--ready-file", str(ready_file)]
    process_env = {**os.environ, **environment} if environment else None
    process = start_service(
        "services.local_aws", [*args, *(extra_args or [])], log_path, process_env
    )
    wait_for_file(ready_file, process, log_path, READY_TIMEOUT_S)
    endpoint_url = json.loads(ready_file.read_text())["endpoint_url"]
    try:
        wait_for_health(f"{endpoint_url}/_local_aws/health", process, log_path)
    except Exception:
        stop_process_group(process)
        raise
    env = write_profile(state_dir / "profile", endpoint_url)
    return LocalAws(endpoint_url, state_dir, env, process, log_path)


@contextlib.contextmanager
def running_local_aws(
    state_dir: Path,
    extra_args: list[str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> Iterator[LocalAws]:
    """An emulator of its own, its profile selected in os.environ (no stray keys), then stopped."""
    emulator = start_local_aws(state_dir, extra_args, environment)
    try:
        with selected_profile(emulator.env, hide=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            yield emulator
    finally:
        stop_process_group(emulator.process)


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


# What a browser may send to a local service from another site (refused: 403), and what a plain
# client sends (200): DNS rebinding shows as a foreign Host.
BROWSER_REQUESTS: list[tuple[dict[str, str], int]] = [
    ({"Origin": "http://evil.example"}, 403),
    ({"Host": "evil.example:4570"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({}, 200),
]


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
        functions[function.folder] = create_function(
            lam,
            f"{function.folder}-{suffix}",
            zip_bytes,
            role,
            handler=HANDLER,
            Timeout=timeout_s,
            Environment={"Variables": dict(environments.get(function.folder, {}))},
        )
    machine = boto3.client("stepfunctions").create_state_machine(
        name=f"image-classification-{suffix}",
        definition=render_for_functions({f: c["FunctionArn"] for f, c in functions.items()}),
        roleArn=role,
    )["stateMachineArn"]
    return Workflow(machine, role, functions)


class StateMachines:
    """Clients on one emulator, selected by its own profile (no process-wide state).

    State machines are created with one role that may invoke any function (IAM is enforced:
    they sign their Lambda calls with it); functions are created once per name.
    """

    def __init__(self, emulator: LocalAws, prefix: str) -> None:
        self.emulator = emulator
        self.session = emulator.session()
        self.sfn = self.session.client("stepfunctions")
        self.lam = self.session.client("lambda")
        self.role = invoking_role(self.session, prefix)
        self.functions: dict[str, str] = {}

    def function(self, name: str, code: str | bytes, timeout: int = 10) -> str:
        """The ARN of the function `name` running `code` (created and waited Active once)."""
        if name not in self.functions:
            created = create_function(self.lam, name, code, self.role, Timeout=timeout)
            self.functions[name] = created["FunctionArn"]
        return self.functions[name]

    def machine(self, asl: dict[str, Any], kind: str = "STANDARD") -> str:
        """A new state machine of `kind` running `asl`; its ARN."""
        return create_machine(self.sfn, asl, self.role, kind)

    def run(self, machine: str | dict[str, Any], execution_input: Any) -> dict[str, Any]:
        """One execution of `machine` (an ARN, or ASL to create one from), waited for."""
        arn = machine if isinstance(machine, str) else self.machine(machine)
        return run_execution(self.sfn, arn, execution_input)


def tasks_in_a_row(resource: str) -> dict[str, Any]:
    """ASL of three Task states in a row calling `resource`: the shape of the workflow."""
    task = {"Type": "Task", "Resource": resource}
    return {
        "StartAt": "One",
        "States": {
            "One": {**task, "Next": "Two"},
            "Two": {**task, "Next": "Three"},
            "Three": {**task, "End": True},
        },
    }


def create_machine(sfn: Any, asl: dict[str, Any], role_arn: str, kind: str = "STANDARD") -> str:
    """A new state machine (a random name) of `kind` running `asl` with `role_arn`; its ARN."""
    arn: str = sfn.create_state_machine(
        name=f"m-{uuid.uuid4().hex[:10]}", definition=json.dumps(asl), roleArn=role_arn, type=kind
    )["stateMachineArn"]
    return arn


def run_execution(
    sfn: Any,
    machine_arn: str,
    execution_input: Any,
    name: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Start an execution and wait until it finishes: `finished_execution`."""
    start = {"stateMachineArn": machine_arn, "input": json.dumps(execution_input)}
    if name is not None:
        start["name"] = name
    return finished_execution(sfn, sfn.start_execution(**start)["executionArn"], timeout_s)


def finished_execution(sfn: Any, execution_arn: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until an execution leaves RUNNING; its description and its events."""
    deadline = time.monotonic() + timeout_s
    while (described := sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"execution {execution_arn} did not finish"
        time.sleep(0.02)
    described["events"] = sfn.get_execution_history(executionArn=execution_arn)["events"]
    result: dict[str, Any] = described
    return result


INVOKE_ANY_FUNCTION = {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"}


def service_role(
    iam: Any,
    prefix: str,
    statements: list[dict[str, Any]],
    services: tuple[str, ...] = ("lambda.amazonaws.com", "states.amazonaws.com"),
) -> str:
    """A role `services` may assume, named `<prefix>-<random>`, allowed `statements`; its ARN.

    IAM is enforced on role credentials, as on AWS: give the role what its callers use.
    """
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust(*services))["Role"][
        "Arn"
    ]
    iam.put_role_policy(RoleName=name, PolicyName="permissions", PolicyDocument=policy(statements))
    return arn


def role_session(role_arn: str, session_name: str = "probe") -> Any:
    """A boto3 session with the credentials of the role, assumed with the default session's."""
    import boto3

    credentials = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name)[
        "Credentials"
    ]
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def invoking_role(session: Any, prefix: str) -> str:
    """A role Lambda and Step Functions may assume that may invoke any function; its ARN.

    With IAM enforced, state machines sign their Lambda calls with their role.
    """
    return service_role(session.client("iam"), prefix, [INVOKE_ANY_FUNCTION])
