"""Persistence of the embedded emulator: kill -9 mid-work, restart on the same folder, all there."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from scones.deploy.iam import trust
from scones.testing_functions import create_function
from services.local_aws import persistence, persistence_pickle
from services.local_aws.persistence_blobs import BlobStore
from services.local_aws.persistence_requests import request_service, s3_target
from tests.conftest import (
    LocalAws,
    running_local_aws,
    selected_profile,
    start_local_aws,
    stop_process,
)

HANDLER = """
import json, os, boto3

def handler(event, context):
    print("seen", json.dumps(event))
    return {"doubled": event.get("n", 0) * 2, "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"]}
"""
TRUST = trust("lambda.amazonaws.com", "states.amazonaws.com")


def _kill9(aws: LocalAws) -> None:
    os.killpg(aws.process.pid, signal.SIGKILL)
    aws.process.wait(timeout=10)


def _wait_execution(sfn: Any, arn: str) -> str:
    waiter_deadline = time.monotonic() + 120
    while time.monotonic() < waiter_deadline:
        status = str(sfn.describe_execution(executionArn=arn)["status"])
        if status != "RUNNING":
            return status
        time.sleep(0.05)
    raise AssertionError(f"{arn} still RUNNING")


def _deployed_state(bucket: str, function: str, machine_arn: str) -> dict[str, Any]:
    """What a redeploy compares: every field that would make it change something."""
    s3, iam = boto3.client("s3"), boto3.client("iam")
    lam, sfn = boto3.client("lambda"), boto3.client("stepfunctions")
    config = lam.get_function_configuration(FunctionName=function)
    machine = sfn.describe_state_machine(stateMachineArn=machine_arn)
    role = iam.get_role(RoleName=f"{function}-role")["Role"]
    return {
        "bucket_policy": s3.get_bucket_policy(Bucket=bucket)["Policy"],
        "objects": {
            o["Key"]: (o["ETag"], o["Size"])
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        },
        "role": (role["RoleId"], role["Arn"], json.dumps(role["AssumeRolePolicyDocument"])),
        "inline_policies": iam.list_role_policies(RoleName=f"{function}-role")["PolicyNames"],
        "function": {
            k: config.get(k)
            for k in ("CodeSha256", "LastModified", "Role", "Handler", "Environment")
        },
        "versions": [
            (v["Version"], v["CodeSha256"])
            for v in lam.list_versions_by_function(FunctionName=function)["Versions"]
        ],
        "aliases": [
            (a["Name"], a["FunctionVersion"], a.get("RevisionId"))
            for a in lam.list_aliases(FunctionName=function)["Aliases"]
        ],
        "concurrency": lam.get_function_concurrency(FunctionName=function).get(
            "ReservedConcurrentExecutions"
        ),
        "machine": (machine["definition"], machine["roleArn"], machine["creationDate"]),
    }


def _histories(machine_arn: str) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=machine_arn)["executions"]
    return {
        e["name"]: (
            e["status"],
            [
                (event["id"], event["type"], event["timestamp"])
                for event in sfn.get_execution_history(executionArn=e["executionArn"])["events"]
            ],
        )
        for e in executions
    }


def test_everything_survives_kill_9_mid_work_and_a_redeploy_finds_nothing_to_change(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "local_aws"
    aws = start_local_aws(state_dir)
    name = f"persist-{uuid.uuid4().hex[:8]}"
    acknowledged: dict[str, bytes] = {}
    try:
        with selected_profile(aws.env):
            s3, iam = boto3.client("s3"), boto3.client("iam")
            lam, sfn = boto3.client("lambda"), boto3.client("stepfunctions")
            s3.create_bucket(Bucket=name)
            s3.put_bucket_policy(
                Bucket=name,
                Policy=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Deny",
                                "Principal": "*",
                                "Action": "s3:DeleteBucket",
                                "Resource": f"arn:aws:s3:::{name}",
                            }
                        ],
                    }
                ),
            )
            role_arn = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=TRUST)[
                "Role"
            ]["Arn"]
            iam.put_role_policy(
                RoleName=f"{name}-role",
                PolicyName="logs",
                PolicyDocument=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": "logs:*", "Resource": "*"},
                            # The state machine signs with this role too.
                            {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"},
                        ],
                    }
                ),
            )
            function_arn = create_function(
                lam,
                name,
                HANDLER,
                role_arn,
                runtime="python3.12",
                Environment={"Variables": {"STAGE": "local"}},
            )["FunctionArn"]
            version = lam.publish_version(FunctionName=name)["Version"]
            lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=4)
            machine_arn = sfn.create_state_machine(
                name=name,
                roleArn=role_arn,
                definition=json.dumps(
                    {
                        "StartAt": "Double",
                        "States": {
                            "Double": {"Type": "Task", "Resource": function_arn, "End": True}
                        },
                    }
                ),
            )["stateMachineArn"]
            before_invoke = json.loads(
                lam.invoke(FunctionName=name, Qualifier="live", Payload=b'{"n": 21}')[
                    "Payload"
                ].read()
            )
            for i in range(3):
                arn = sfn.start_execution(
                    stateMachineArn=machine_arn, name=f"run-{i}", input=json.dumps({"n": i})
                )["executionArn"]
                assert _wait_execution(sfn, arn) == "SUCCEEDED"

            # Objects are written concurrently until the kill; only acknowledged ones count.
            stop = threading.Event()

            def writer(worker: int) -> None:
                client = boto3.session.Session().client("s3")
                n = 0
                while not stop.is_set():
                    key, body = f"w{worker}/{n:05d}.bin", os.urandom(64 + n % 5000)
                    try:
                        client.put_object(Bucket=name, Key=key, Body=body)
                    except Exception:
                        return  # the kill cut this one off: never acknowledged
                    acknowledged[key] = body
                    n += 1

            writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
            for thread in writers:
                thread.start()
            deadline = time.monotonic() + 60
            while len(acknowledged) < 60 and time.monotonic() < deadline:
                time.sleep(0.02)
            before_histories = _histories(machine_arn)
            # Logs reach the store in the background, within persistence.BACKGROUND_DELAY_S.
            time.sleep(persistence.BACKGROUND_DELAY_S * 3)
            _kill9(aws)
            stop.set()
            for thread in writers:
                thread.join(timeout=30)
            assert len(acknowledged) >= 60

        aws = start_local_aws(state_dir)
        with selected_profile(aws.env):
            s3, lam = boto3.client("s3"), boto3.client("lambda")
            for key, body in acknowledged.items():
                assert s3.get_object(Bucket=name, Key=key)["Body"].read() == body, key
            state = _deployed_state(name, name, machine_arn)
            assert state["concurrency"] == 4
            assert state["aliases"][0][:2] == ("live", version)
            assert state["inline_policies"] == ["logs"]
            assert _histories(machine_arn) == before_histories
            groups = boto3.client("logs").describe_log_groups()["logGroups"]
            assert f"/aws/lambda/{name}" in [g["logGroupName"] for g in groups]
            # The restored function runs again, its code from the persisted package.
            answer = lam.invoke(FunctionName=name, Qualifier="live", Payload=b'{"n": 21}')
            assert json.loads(answer["Payload"].read()) == before_invoke
            assert before_invoke["doubled"] == 42
            execution = boto3.client("stepfunctions").start_execution(
                stateMachineArn=machine_arn, name="after-restart", input='{"n": 5}'
            )["executionArn"]
            assert _wait_execution(boto3.client("stepfunctions"), execution) == "SUCCEEDED"
        stop_process(aws.process)

        # A clean stop and start changes nothing either.
        aws = start_local_aws(state_dir)
        with selected_profile(aws.env):
            assert _deployed_state(name, name, machine_arn) == state
            assert "after-restart" in _histories(machine_arn)
    finally:
        stop_process(aws.process)


def test_a_torn_journal_tail_is_ignored_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    state_dir = tmp_path / "local_aws"
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="torn-journal")
        for i in range(5):
            s3.put_object(Bucket="torn-journal", Key=f"k{i}", Body=f"v{i}".encode())
        _kill9(aws)
    journals = sorted((state_dir / "persist" / "s3").glob("journal.*"))
    assert journals and journals[-1].stat().st_size > 0
    with open(journals[-1], "ab") as journal:
        journal.write(b"\x00\x00\x10\x00\xde\xad")  # a record cut off by the kill
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        listed = s3.list_objects_v2(Bucket="torn-journal")["Contents"]
        assert [o["Key"] for o in listed] == [f"k{i}" for i in range(5)]
        assert s3.get_object(Bucket="torn-journal", Key="k4")["Body"].read() == b"v4"
        s3.put_object(Bucket="torn-journal", Key="k5", Body=b"v5")
        _kill9(aws)
    with running_local_aws(state_dir):
        body = boto3.client("s3").get_object(Bucket="torn-journal", Key="k5")["Body"].read()
        assert body == b"v5"


def test_deletes_and_overwrites_persist_and_old_bytes_are_removed(tmp_path: Path) -> None:
    state_dir = tmp_path / "local_aws"
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="overwrites")
        s3.put_object(Bucket="overwrites", Key="a", Body=b"first")
        s3.put_object(Bucket="overwrites", Key="a", Body=b"second")
        s3.put_object(Bucket="overwrites", Key="gone", Body=b"x")
        s3.delete_object(Bucket="overwrites", Key="gone")
        s3.put_object(Bucket="overwrites", Key="many", Body=b"1")
        s3.delete_objects(Bucket="overwrites", Delete={"Objects": [{"Key": "many"}]})
        # A multipart upload (as boto3 sends a model.tar.gz over 8 MiB).
        large = tmp_path / "model.tar.gz"
        large.write_bytes(os.urandom(9 * 2**20))
        s3.upload_file(str(large), "overwrites", "models/model.tar.gz")
        _kill9(aws)
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        listed = s3.list_objects_v2(Bucket="overwrites")["Contents"]
        assert [o["Key"] for o in listed] == ["a", "models/model.tar.gz"]
        assert s3.get_object(Bucket="overwrites", Key="a")["Body"].read() == b"second"
        restored = s3.get_object(Bucket="overwrites", Key="models/model.tar.gz")["Body"]
        assert restored.read() == large.read_bytes()
        # A clean stop compacts: one blob per object remains (older ones after a second).
        time.sleep(1.1)
        stop_process(aws.process)
    assert len(list((state_dir / "persist" / "s3" / "blobs").iterdir())) == 2


def test_multipart_uploads_in_progress_survive_kill_9(tmp_path: Path) -> None:
    state_dir = tmp_path / "local_aws"
    parts = [os.urandom(5 * 2**20), os.urandom(5 * 2**20), b"tail"]
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="uploads")
        upload = s3.create_multipart_upload(Bucket="uploads", Key="big.bin")["UploadId"]
        etags = [
            s3.upload_part(
                Bucket="uploads", Key="big.bin", UploadId=upload, PartNumber=n, Body=body
            )["ETag"]
            for n, body in enumerate(parts[:2], start=1)
        ]
        aborted = s3.create_multipart_upload(Bucket="uploads", Key="big.bin")["UploadId"]
        s3.abort_multipart_upload(Bucket="uploads", Key="big.bin", UploadId=aborted)
        other = s3.create_multipart_upload(Bucket="uploads", Key="other.bin")["UploadId"]
        _kill9(aws)
    with running_local_aws(state_dir) as aws:
        s3 = boto3.client("s3")
        listed = s3.list_multipart_uploads(Bucket="uploads")["Uploads"]
        assert sorted((u["Key"], u["UploadId"]) for u in listed) == sorted(
            [("big.bin", upload), ("other.bin", other)]
        )
        restored = s3.list_parts(Bucket="uploads", Key="big.bin", UploadId=upload)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in restored] == [
            (1, etags[0], len(parts[0])),
            (2, etags[1], len(parts[1])),
        ]
        etags.append(
            s3.upload_part(
                Bucket="uploads", Key="big.bin", UploadId=upload, PartNumber=3, Body=parts[2]
            )["ETag"]
        )
        s3.complete_multipart_upload(
            Bucket="uploads",
            Key="big.bin",
            UploadId=upload,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]
            },
        )
        _kill9(aws)
    with running_local_aws(state_dir):
        s3 = boto3.client("s3")
        assert s3.get_object(Bucket="uploads", Key="big.bin")["Body"].read() == b"".join(parts)
        listed = s3.list_multipart_uploads(Bucket="uploads").get("Uploads", [])
        assert [(u["Key"], u["UploadId"]) for u in listed] == [("other.bin", other)]


def _provisioned_status(lam: Any, name: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        config = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="live")
        if config["Status"] == wanted:
            return dict(config)
        assert time.monotonic() < deadline, f"provisioned concurrency still {config['Status']}"
        time.sleep(0.05)


def test_provisioned_concurrency_is_ready_again_after_kill_9(tmp_path: Path) -> None:
    """Its environments are processes a kill -9 ends: a restart provisions the config again."""
    state_dir = tmp_path / "local_aws"
    with running_local_aws(state_dir) as aws:
        iam, lam = boto3.client("iam"), boto3.client("lambda")
        role = iam.create_role(RoleName="provisioned", AssumeRolePolicyDocument=TRUST)["Role"]
        create_function(lam, "provisioned", HANDLER, role["Arn"])
        version = lam.publish_version(FunctionName="provisioned")["Version"]
        lam.create_alias(FunctionName="provisioned", Name="live", FunctionVersion=version)
        lam.put_provisioned_concurrency_config(
            FunctionName="provisioned", Qualifier="live", ProvisionedConcurrentExecutions=2
        )
        _provisioned_status(lam, "provisioned", "READY")
        _kill9(aws)
    with running_local_aws(state_dir):
        lam = boto3.client("lambda")
        config = _provisioned_status(lam, "provisioned", "READY")
        assert config["AvailableProvisionedConcurrentExecutions"] == 2
        answer = lam.invoke(FunctionName="provisioned", Qualifier="live", Payload=b'{"n": 2}')
        assert json.loads(answer["Payload"].read())["doubled"] == 4


def test_persistence_off_keeps_todays_in_memory_behaviour(tmp_path: Path) -> None:
    state_dir = tmp_path / "local_aws"
    aws = start_local_aws(state_dir, ["--no-persist"])
    try:
        with selected_profile(aws.env):
            boto3.client("s3").create_bucket(Bucket="in-memory-only")
            health = json.loads(
                __import__("urllib.request")
                .request.urlopen(f"{aws.endpoint_url}/_local_aws/health", timeout=5)
                .read()
            )
            assert health["persistence"] is False
        _kill9(aws)
        assert not (state_dir / "persist").exists()
        aws = start_local_aws(state_dir, ["--no-persist"])
        with selected_profile(aws.env), pytest.raises(ClientError) as error:
            boto3.client("s3").head_bucket(Bucket="in-memory-only")
        assert error.value.response["Error"]["Code"] == "404"
    finally:
        stop_process(aws.process)


def test_a_running_execution_is_restored_as_failed_with_a_reason(tmp_path: Path) -> None:
    state_dir = tmp_path / "local_aws"
    aws = start_local_aws(state_dir)
    try:
        with selected_profile(aws.env):
            sfn = boto3.client("stepfunctions")
            # CreateStateMachine checks that Step Functions may assume the role, as AWS.
            role_arn = boto3.client("iam").create_role(
                RoleName="states", AssumeRolePolicyDocument=TRUST
            )["Role"]["Arn"]
            machine = sfn.create_state_machine(
                name="waits",
                roleArn=role_arn,
                definition=json.dumps(
                    {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": True}}}
                ),
            )["stateMachineArn"]
            sfn.start_execution(stateMachineArn=machine, name="long", input="{}")
        _kill9(aws)
        aws = start_local_aws(state_dir)
        with selected_profile(aws.env):
            sfn = boto3.client("stepfunctions")
            (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
            described = sfn.describe_execution(executionArn=execution["executionArn"])
            assert described["status"] == "FAILED"
            assert described["error"] == "Local.EmulatorRestarted"
    finally:
        stop_process(aws.process)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"REQUEST_METHOD": "PUT", "PATH_INFO": "/b/k/x.png"}, ("b", "k/x.png")),
        (
            {"REQUEST_METHOD": "PUT", "PATH_INFO": "/b/k", "QUERY_STRING": "x-id=PutObject"},
            ("b", "k"),
        ),
        ({"REQUEST_METHOD": "PUT", "PATH_INFO": "/b"}, None),
        ({"REQUEST_METHOD": "POST", "PATH_INFO": "/b", "QUERY_STRING": "delete"}, None),
        ({"REQUEST_METHOD": "PUT", "PATH_INFO": "/b/k", "QUERY_STRING": "tagging"}, None),
        (
            {
                "REQUEST_METHOD": "PUT",
                "PATH_INFO": "/b/k",
                "QUERY_STRING": "partNumber=1&uploadId=u",
            },
            ("b", None),
        ),
        (
            {"REQUEST_METHOD": "PUT", "PATH_INFO": "/k", "HTTP_HOST": "b.s3.localhost:4566"},
            ("b", "k"),
        ),
        (
            {"REQUEST_METHOD": "PUT", "PATH_INFO": "/b/caf\xc3\xa9", "HTTP_HOST": "127.0.0.1:4566"},
            ("b", "café"),
        ),
    ],
)
def test_s3_requests_are_classified_by_what_they_change(
    environ: dict[str, str], expected: tuple[str, str | None] | None
) -> None:
    assert s3_target(environ) == expected


def _signed(service: str, **extra: str) -> dict[str, str]:
    credential = f"Credential=test/20261201/us-east-1/{service}/aws4_request, SignedHeaders=host"
    return {
        "REQUEST_METHOD": "POST",
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 {credential}",
        **extra,
    }


def test_reads_write_nothing_and_changes_name_their_service() -> None:
    sfn_read = _signed("states", HTTP_X_AMZ_TARGET="AWSStepFunctions.DescribeExecution")
    assert request_service(sfn_read, None) is None
    sfn_create = _signed("states", HTTP_X_AMZ_TARGET="AWSStepFunctions.CreateStateMachine")
    assert request_service(sfn_create, None) == "stepfunctions"
    # Executions are journaled by hooks where they start and end, not by a snapshot.
    sfn_start = _signed("states", HTTP_X_AMZ_TARGET="AWSStepFunctions.StartExecution")
    assert request_service(sfn_start, None) is None
    assert request_service(_signed("iam"), b"Action=GetRole&RoleName=r") is None
    assert request_service(_signed("iam"), b"Action=CreateRole&RoleName=r") == "iam"
    invoke = _signed("lambda", PATH_INFO="/2015-03-31/functions/f/invocations")
    assert request_service(invoke, None) is None
    assert request_service(_signed("s3"), None) == "s3"
    assert request_service({"REQUEST_METHOD": "POST"}, None) == "*"


def test_state_pickled_before_the_module_split_still_loads(tmp_path: Path) -> None:
    # Helpers were once pickled by reference as services.local_aws.persistence.<name>.
    moved = (persistence_pickle.FrozenHistory(["event"]), persistence_pickle._new_lock)
    current = pickle.dumps(moved, protocol=2)
    assert b"services.local_aws.persistence_pickle\n" in current
    former = current.replace(b"local_aws.persistence_pickle\n", b"local_aws.persistence\n")
    history, new_lock = persistence_pickle.StateUnpickler(
        io.BytesIO(former), BlobStore(tmp_path / "blobs")
    ).load()
    assert history.get_event_history() == ["event"]
    assert new_lock is persistence_pickle._new_lock
