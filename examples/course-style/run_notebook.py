"""Run the course-style SDK v2 notebook headless, as on a SageMaker notebook instance.

What a notebook instance gives SDK v2, this launcher gives it with configuration only:
- a notebook instance record (CreateNotebookInstance on the current profile's SageMaker) whose
  `RoleArn` is an execution role created in IAM: `get_execution_role()` reads
  `/opt/ml/metadata/resource-metadata.json` and calls DescribeNotebookInstance, as on AWS;
- that metadata file, visible only to the kernel: the kernel runs in a private mount namespace
  (`unshare --mount`) where an overlay on /opt (or a bind mount over an existing
  /opt/ml/metadata) adds it; the host's /opt is untouched;
- the SDK's own `config.yaml` (through `SAGEMAKER_USER_CONFIG_OVERRIDE`) with `DefaultS3Bucket`
  `sagemaker-<region>-<account>` (the name the SDK itself would derive) and telemetry off (it
  would call an AWS host directly): with both, SDK v2 makes no call to STS, whose endpoint it
  hard-codes as `https://sts.<region>.amazonaws.com`;
- the data: a synthetic `cifar-100-python.tar.gz` (two classes) beside the notebook, since the
  course's download URL is not reachable offline.

Every AWS call the notebook makes then follows the profile (AWS_PROFILE / AWS_CONFIG_FILE), so
the same notebook runs on AWS by selecting a real profile on a real notebook instance.

    python examples/course-style/run_notebook.py [--workdir DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
NOTEBOOK = HERE / "starter.ipynb"
SDKV2_PYTHON = REPO_ROOT / ".venv-sdkv2" / "bin" / "python"
METADATA_DIR = "/opt/ml/metadata"
ROLE_NAME = "AmazonSageMaker-ExecutionRole-scones-course"
INSTANCE_NAME = "scones-course"
SAGEMAKER_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
# Variables of the launcher's own venv that must not leak into the SDK v2 kernel.
FOREIGN_VARIABLES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")


def execution_role(iam: object) -> str:
    """The notebook's execution role ARN, created (with SageMaker's trust policy) if missing."""
    try:
        return iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
    role = iam.create_role(  # type: ignore[attr-defined]
        RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST)
    )
    return role["Role"]["Arn"]


def notebook_instance(sagemaker: object, name: str, role_arn: str) -> str:
    """The notebook instance's ARN; created, or started when stopped, so that it is InService."""
    try:
        described = sagemaker.describe_notebook_instance(  # type: ignore[attr-defined]
            NotebookInstanceName=name
        )
    except ClientError as exc:
        if "RecordNotFound" not in str(exc):
            raise
        created = sagemaker.create_notebook_instance(  # type: ignore[attr-defined]
            NotebookInstanceName=name, InstanceType="ml.t3.medium", RoleArn=role_arn
        )
        return str(created["NotebookInstanceArn"])
    if described["NotebookInstanceStatus"] in ("Stopped", "Failed"):
        sagemaker.start_notebook_instance(NotebookInstanceName=name)  # type: ignore[attr-defined]
    return str(described["NotebookInstanceArn"])


def sdk_config(region: str, account: str) -> str:
    """The SDK v2 `config.yaml` (JSON is YAML): default bucket, telemetry off."""
    config = {
        "SchemaVersion": "1.0",
        "SageMaker": {
            "PythonSDK": {
                "Modules": {
                    "Session": {"DefaultS3Bucket": f"sagemaker-{region}-{account}"},
                    "TelemetryOptOut": True,
                }
            }
        },
    }
    return json.dumps(config, indent=1) + "\n"


def stage_data(workdir: Path, rows_train: int, rows_test: int) -> Path:
    """A synthetic CIFAR-100 archive (bicycle and motorcycle rows only) beside the notebook."""
    from scones.etl.synthetic import write_archive

    archive = workdir / "cifar-100-python.tar.gz"
    write_archive(archive, 0, rows_train, rows_test, only_classes=("bicycle", "motorcycle"))
    return archive


def namespace_command(metadata: Path, scratch: Path, command: list[str]) -> list[str]:
    """`command` inside a private mount namespace where /opt/ml/metadata is `metadata`."""
    if Path(METADATA_DIR).is_dir():
        script = 'mount --bind "$1" /opt/ml/metadata && shift && exec "$@"'
        return [*_unshare(), "sh", "-c", script, "sh", str(metadata), *command]
    # The folder's parents do not exist here: lay an overlay on /opt whose upper layer holds
    # ml/metadata (outside the namespace the host's /opt stays as it is).
    upper, work = scratch / "upper", scratch / "work"
    (upper / "ml").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(metadata, upper / "ml" / "metadata", dirs_exist_ok=True)
    script = (
        'mount -t overlay overlay -o "lowerdir=/opt,upperdir=$1,workdir=$2" /opt '
        '&& shift 2 && exec "$@"'
    )
    return [*_unshare(), "sh", "-c", script, "sh", str(upper), str(work), *command]


def _unshare() -> list[str]:
    # As root a plain mount namespace; otherwise one inside a user namespace mapped to root.
    base = ["unshare", "--mount", "--propagation", "private"]
    return base if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *base[1:]]


def namespace_available() -> str | None:
    """None when a private mount namespace can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is missing"
    probe = subprocess.run(
        [*_unshare(), "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"cannot make a private mount namespace: {probe.stderr.strip()}"
    return None


def kernel_environment(config_path: Path) -> dict[str, str]:
    """The kernel's environment: the current profile, the SDK's config, nothing of this venv."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    env.update(
        SAGEMAKER_USER_CONFIG_OVERRIDE=str(config_path),
        MPLBACKEND="Agg",
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def main(argv: list[str] | None = None) -> int:
    """Prepare the instance, the data and the namespace; execute the notebook."""
    parser = argparse.ArgumentParser(description="Run the course-style SDK v2 notebook headless.")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".state" / "course-notebook")
    parser.add_argument("--output", type=Path, help="executed notebook (default: in workdir)")
    parser.add_argument("--instance-name", default=INSTANCE_NAME)
    parser.add_argument("--python", type=Path, default=SDKV2_PYTHON, help="SDK v2 interpreter")
    parser.add_argument("--rows-train", type=int, default=20_000, help="rows of all 100 classes")
    parser.add_argument("--rows-test", type=int, default=5_000)
    parser.add_argument("--cell-timeout", type=int, default=600)
    args = parser.parse_args(argv)
    if not args.python.exists():
        print(f"{args.python} is missing: run `make notebook-env`", file=sys.stderr)
        return 2
    why_not = namespace_available()
    if why_not:
        print(f"cannot run as a notebook instance: {why_not}", file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = time.perf_counter()

    session = boto3.Session()
    account = session.client("sts").get_caller_identity()["Account"]
    role_arn = execution_role(session.client("iam"))
    instance_arn = notebook_instance(session.client("sagemaker"), args.instance_name, role_arn)
    metadata = workdir / ".instance" / "metadata"
    metadata.mkdir(parents=True)
    (metadata / "resource-metadata.json").write_text(
        json.dumps({"ResourceArn": instance_arn, "ResourceName": args.instance_name})
    )
    config_path = workdir / ".instance" / "sagemaker-config.yaml"
    config_path.write_text(sdk_config(session.region_name, account))
    stage_data(workdir, args.rows_train, args.rows_test)
    notebook = workdir / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, notebook)
    output = (args.output or workdir / "starter.executed.ipynb").resolve()
    prepared = time.perf_counter()

    command = namespace_command(
        metadata,
        workdir / ".instance" / "overlay",
        [
            str(args.python),
            str(HERE / "execute.py"),
            str(notebook),
            str(output),
            "--timeout",
            str(args.cell_timeout),
        ],
    )
    status = subprocess.run(command, cwd=workdir, env=kernel_environment(config_path)).returncode
    done = time.perf_counter()
    print(
        f"notebook {'passed' if status == 0 else 'FAILED'}: {output} "
        f"(prepare {prepared - started:.1f} s, execute {done - prepared:.1f} s)"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
