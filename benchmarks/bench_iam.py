"""Benchmark of IAM enforcement: warm Lambda invoke latency with enforcement on and off.

One run, two emulators side by side (these machines are noisy). Each invoke runs a function
whose role may read one object, and which reads it: the function's S3 call is the one checked
(the invoke itself is made by the administrator). Reported: median and p95 of warm invokes,
and the ratio on/off.

    .venv/bin/python -m benchmarks.bench_iam [--invokes 200]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.latency import enforced_vs_not
from scones.deploy.iam import trust
from scones.testing import LocalAws
from scones.testing_functions import create_function

HANDLER = """
import boto3
s3 = boto3.client("s3")

def handler(event, context):
    return {"size": len(s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read())}
"""
TRUST = trust("lambda.amazonaws.com")


def _deploy(aws: LocalAws) -> dict[str, str]:
    s3, iam, lam = aws.client("s3"), aws.client("iam"), aws.client("lambda")
    s3.create_bucket(Bucket="bench-iam")
    s3.put_object(Bucket="bench-iam", Key="in/scone.png", Body=b"x" * 4096)
    role = iam.create_role(RoleName="reader", AssumeRolePolicyDocument=TRUST)
    statements = [
        {"Effect": "Allow", "Action": "logs:*", "Resource": "arn:aws:logs:*:*:*"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bench-iam/in/*"},
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"},
    ]
    iam.put_role_policy(
        RoleName="reader",
        PolicyName="read",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    create_function(lam, "reader", HANDLER, role["Role"]["Arn"], runtime="python3.12")
    return {"bucket": "bench-iam", "key": "in/scone.png"}


def _invokes(aws: LocalAws, event: dict[str, str], count: int) -> list[float]:
    lam = aws.client("lambda")
    payload = json.dumps(event).encode()
    samples = []
    for _ in range(count + 5):
        started = time.perf_counter()
        answer = lam.invoke(FunctionName="reader", Payload=payload)
        result = json.loads(answer["Payload"].read())
        samples.append((time.perf_counter() - started) * 1000)
        if result != {"size": 4096}:
            raise RuntimeError(f"unexpected answer {result}")
    return samples[5:]  # the first invokes start the worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invokes", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, Any] = {"invokes": args.invokes}
    results.update(enforced_vs_not(_deploy, _invokes, args.invokes))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
