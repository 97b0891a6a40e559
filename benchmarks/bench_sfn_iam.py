"""Benchmark of state machines calling Lambda with their role: warm execution latency, IAM on/off.

One run, two emulators side by side (these machines are noisy), rounds interleaved. Each
execution is a synchronous Express execution (StartSyncExecution, so no polling) of three Lambda
tasks in a row, as the project's workflow, both Resource forms; every task is signed with the
state machine's role credentials and, with enforcement on, checked against its policies
(lambda:InvokeFunction on the function). Reported: median and p95 of warm executions, and the
median ratio on/off.

    .venv/bin/python -m benchmarks.bench_sfn_iam [--executions 200]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from botocore.config import Config

from benchmarks.latency import enforced_vs_not
from scones.deploy.iam import trust
from scones.testing import LocalAws
from scones.testing_functions import create_function

HANDLER = """
def handler(event, context):
    return {"n": event.get("n", 0) + 1}
"""


# StartSyncExecution's 'sync-' host prefix would leave the emulator's address.
NO_HOST_PREFIX = Config(inject_host_prefix=False)


def _deploy(aws: LocalAws) -> str:
    iam, lam, sfn = (
        aws.client("iam", NO_HOST_PREFIX),
        aws.client("lambda", NO_HOST_PREFIX),
        aws.client("stepfunctions", NO_HOST_PREFIX),
    )
    function_role = iam.create_role(
        RoleName="fn", AssumeRolePolicyDocument=trust("lambda.amazonaws.com")
    )["Role"]["Arn"]
    function_arn = create_function(lam, "step", HANDLER, function_role, runtime="python3.12")[
        "FunctionArn"
    ]
    states_role = iam.create_role(
        RoleName="states", AssumeRolePolicyDocument=trust("states.amazonaws.com")
    )["Role"]["Arn"]
    statements = [
        {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": function_arn},
        {"Effect": "Deny", "Action": "lambda:DeleteFunction", "Resource": "*"},
    ]
    iam.put_role_policy(
        RoleName="states",
        PolicyName="invoke",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    integration = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": function_arn, "Payload.$": "$"},
        "OutputPath": "$.Payload",
    }
    asl = {
        "StartAt": "One",
        "States": {
            "One": {**integration, "Next": "Two"},
            "Two": {"Type": "Task", "Resource": function_arn, "Next": "Three"},
            "Three": {**integration, "End": True},
        },
    }
    machine: str = sfn.create_state_machine(
        name="bench", definition=json.dumps(asl), roleArn=states_role, type="EXPRESS"
    )["stateMachineArn"]
    return machine


def _executions(aws: LocalAws, machine: str, count: int) -> list[float]:
    sfn = aws.client("stepfunctions", NO_HOST_PREFIX)
    samples = []
    for _ in range(count + 5):
        started = time.perf_counter()
        answer = sfn.start_sync_execution(stateMachineArn=machine, input='{"n": 0}')
        samples.append((time.perf_counter() - started) * 1000)
        if answer["status"] != "SUCCEEDED" or json.loads(answer["output"]) != {"n": 3}:
            raise RuntimeError(f"unexpected answer {answer}")
    return samples[5:]  # the first executions start the worker and parse the definition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executions", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, Any] = {"executions": args.executions, "lambda_tasks_each": 3}
    results.update(enforced_vs_not(_deploy, _executions, args.executions))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
