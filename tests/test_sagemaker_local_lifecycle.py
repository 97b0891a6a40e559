"""sagemaker-local across restarts and kills (__main__, state_lock): endpoints come back,
nothing is orphaned, one process per state folder, no invented account.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from scones.testing_processes import alive as pid_alive
from tests.sagemaker_local_harness import (
    REPO_ROOT,
    WAIT,
    SageMakerLocal,
    capture_records,
    endpoint_in_service,
    input_capture,
    png_bytes,
    process_env,
    runtime,
    serving_endpoint,
    sm,
    training_job,
    wait_for,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


def test_restart_keeps_endpoints_and_loses_no_capture(
    profile: dict[str, Any],
    sagemaker_local: SageMakerLocal,
    bucket: str,
    tiny_model: dict[str, Any],
    train_script: Path,
    training_data: None,
    tmp_path: Path,
) -> None:
    # The module's service shares the profile's port: stop it, run our own, start it again.
    sagemaker_local.stop()
    service = SageMakerLocal(
        tmp_path / "state",
        profile["port"],
        # Capture would wait 5 minutes: only the shutdown flush can write the record in time.
        process_env(SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="300"),
    )
    try:
        service.start()
        client, rt = sm(), runtime()
        name = f"ep-restart-{uuid.uuid4().hex[:6]}"
        prefix = f"capture-{name}"
        endpoint_in_service(name, tiny_model["uri"], capture=input_capture(bucket, prefix))
        arn = client.describe_endpoint(EndpointName=name)["EndpointArn"]
        image = png_bytes(7)
        first = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
        expected = json.loads(first["Body"].read())
        job = f"train-cut-{uuid.uuid4().hex[:6]}"
        client.create_training_job(**training_job(job, bucket, train_script, mode="sleep"))
        job_pid = wait_for(lambda: service.health()["trainingJobs"][job]["pid"], "the job's pid")
        server_pid = service.server(name)["pid"]

        # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert service.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in service.log()
        assert not pid_alive(server_pid) and not pid_alive(job_pid), "orphans after SIGTERM"
        records = capture_records(bucket, prefix)
        assert len(records) == 1, "the shutdown flush must write the buffered record"
        assert (
            records[0][1]["captureData"]["endpointInput"]["data"]
            == base64.b64encode(image).decode()
        )

        started = time.monotonic()
        service.start()
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        print(f"endpoint back InService {time.monotonic() - started:.2f} s after restart")
        assert client.describe_endpoint(EndpointName=name)["EndpointArn"] == arn
        again = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
        assert json.loads(again["Body"].read()) == expected
        interrupted = client.describe_training_job(TrainingJobName=job)
        assert interrupted["TrainingJobStatus"] == "Failed"
        assert "shut down while the job was running" in interrupted["FailureReason"]

        # A hard kill leaves nothing running either (children die with their parent), and the
        # job it cut short is Failed after the next start.
        killed_job = f"train-killed-{uuid.uuid4().hex[:6]}"
        client.create_training_job(**training_job(killed_job, bucket, train_script, mode="sleep"))
        job_pid = wait_for(
            lambda: service.health()["trainingJobs"][killed_job]["pid"], "the job's pid"
        )
        server_pid = service.server(name)["pid"]
        service.stop(signal.SIGKILL)
        wait_for(lambda: not pid_alive(server_pid), "the model server to die with its parent", 15)
        wait_for(lambda: not pid_alive(job_pid), "the training job to die with its parent", 15)
        service.start()
        job = client.describe_training_job(TrainingJobName=killed_job)
        assert job["TrainingJobStatus"] == "Failed"
        assert "stopped while the job was running" in job["FailureReason"]
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    finally:
        service.stop()
        sagemaker_local.start()


def test_a_second_process_on_the_same_state_folder_refuses_to_start(
    sagemaker_local: SageMakerLocal, tiny_model: dict[str, Any]
) -> None:
    name = serving_endpoint("ep-lock", tiny_model["uri"])
    server_pid = sagemaker_local.server(name)["pid"]
    from tests.conftest import free_port

    second = subprocess.run(
        [sys.executable, "-m", "services.sagemaker_local", "--port", str(free_port()),
         "--state-dir", str(sagemaker_local.state_dir)],
        cwd=REPO_ROOT, env=process_env(), capture_output=True, timeout=120,
    )  # fmt: skip
    assert second.returncode != 0
    assert "is in use by another sagemaker-local" in second.stderr.decode()
    assert pid_alive(server_pid), "the first process's model server must be left alone"
    variant = sagemaker_local.server(name)
    assert variant["pid"] == server_pid
    sm().delete_endpoint(EndpointName=name)


def test_without_sts_it_fails_loudly_instead_of_inventing_an_account(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = process_env(
        AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        SAGEMAKER_LOCAL_STS_DEADLINE_S="1",
    )
    env.pop("SAGEMAKER_LOCAL_ACCOUNT_ID", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.sagemaker_local", "--port", str(free_port()),
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO_ROOT, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    stderr = done.stderr.decode()
    assert "STS GetCallerIdentity failed" in stderr and "SAGEMAKER_LOCAL_ACCOUNT_ID" in stderr
    assert "123456789012" not in stderr
    print(f"gave up on STS after {time.monotonic() - started:.2f} s")
