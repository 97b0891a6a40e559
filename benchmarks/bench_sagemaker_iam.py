"""Benchmark of IAM on sagemaker-local: warm InvokeEndpoint latency, checked and not.

One stack (emulator + sagemaker-local), one endpoint whose model answers at once. Three kinds
of caller, interleaved in rounds so the machine's drift hits all alike:

- `admin`: the `local` profile's keys, never checked (the baseline);
- `role_cached`: one STS session whose role may invoke: checked, decision from the 1 s cache;
- `role_uncached`: a fresh STS session per call (client created before timing, so each call
  also opens a connection): every call asks the emulator (`POST /_local_aws/iam/authorize`),
  the worst case; its baseline is `admin_new_client`, a fresh admin client per call.

Reported: median and p95 per caller, and the ratios role_cached/admin and
role_uncached/admin_new_client.

    .venv/bin/python -m benchmarks.bench_sagemaker_iam [--invokes 200]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from benchmarks.latency import latency_summary
from scones.deploy.iam import policy, trust
from scones.testing import LocalStack, start_local_stack

INFERENCE_PY = """
import json


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return body


def predict_fn(data, model):
    return [0.25, 0.75]


def output_fn(prediction, accept):
    return json.dumps(prediction)
"""
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest"
ENDPOINT = "bench-iam"


def _client(stack: LocalStack, service: str, **credentials: str) -> Any:
    url = stack.sagemaker_url
    keys = credentials or {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
        **keys,
    )


def _deploy(stack: LocalStack) -> str:
    s3, iam = stack.aws.client("s3"), stack.aws.client("iam")
    s3.create_bucket(Bucket="bench-sm-iam")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        code = INFERENCE_PY.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    s3.put_object(Bucket="bench-sm-iam", Key="model.tar.gz", Body=archive.getvalue())
    role = iam.create_role(
        RoleName="invoker", AssumeRolePolicyDocument=trust("lambda.amazonaws.com")
    )
    iam.put_role_policy(
        RoleName="invoker",
        PolicyName="invoke",
        PolicyDocument=policy(
            [{"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "*"}]
        ),
    )
    sm = _client(stack, "sagemaker")
    sm.create_model(
        ModelName=ENDPOINT,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://bench-sm-iam/model.tar.gz"},
        ExecutionRoleArn=role["Role"]["Arn"],
    )
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": ENDPOINT,
        "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large",
    }
    sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ProductionVariants=[variant])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=ENDPOINT, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )
    return str(role["Role"]["Arn"])


def _session_client(stack: LocalStack, role_arn: str) -> Any:
    sts = stack.aws.client("sts")
    credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName="bench")["Credentials"]
    return _client(
        stack,
        "sagemaker-runtime",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def _invoke_ms(client: Any) -> float:
    started = time.perf_counter()
    client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body=b"{}")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    """Run the benchmark and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invokes", type=int, default=200, help="per caller, all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    per_round = max(1, args.invokes // args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_local_stack(Path(tmp))
        try:
            role_arn = _deploy(stack)
            admin = _client(stack, "sagemaker-runtime")
            cached = _session_client(stack, role_arn)
            for client in (admin, cached, _session_client(stack, role_arn)):
                _invoke_ms(client)  # connections, model server and the emulator warm
            total = per_round * args.rounds
            fresh = [_session_client(stack, role_arn) for _ in range(total)]
            fresh_admin = [_client(stack, "sagemaker-runtime") for _ in range(total)]
            samples: dict[str, list[float]] = {
                k: [] for k in ("admin", "role_cached", "admin_new_client", "role_uncached")
            }
            for _ in range(args.rounds):
                for _ in range(per_round):
                    samples["admin"].append(_invoke_ms(admin))
                    samples["role_cached"].append(_invoke_ms(cached))
                    samples["admin_new_client"].append(_invoke_ms(fresh_admin.pop()))
                    samples["role_uncached"].append(_invoke_ms(fresh.pop()))
        finally:
            stack.stop()
    summary: dict[str, Any] = {k: latency_summary(v) for k, v in samples.items()}
    for kind, baseline in (("role_cached", "admin"), ("role_uncached", "admin_new_client")):
        base = summary[baseline]["median_ms"]
        summary[kind][f"median_ratio_to_{baseline}"] = round(summary[kind]["median_ms"] / base, 3)
        summary[kind]["added_median_ms"] = round(summary[kind]["median_ms"] - base, 2)
    summary["invokes_per_caller"] = len(samples["admin"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
