"""One idempotent deploy for every target: the AWS profile chooses where, nothing else.

`python -m scripts.deploy` creates or updates, in order: the bucket; IAM roles with
least-privilege policies; the dataset (ETL); the training job; the SageMaker model, endpoint
config (with data capture) and endpoint; the three Lambda functions; the state machine. Each
step compares what exists with what is wanted and acts only on a difference, so a second run
changes nothing. `--plan` prints what would change and changes nothing.

AWS-only work is configuration, not a branch: `--push-image` (set by `make deploy-aws`) builds
the model-server image and pushes it to ECR; without it the image URI is only recorded, since
locally sagemaker-local runs the same server as a process.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from .settings import REPO_ROOT, Settings, load

LAMBDA_FUNCTIONS = {
    # folder: (function name suffix, ASL placeholder, timeout s, memory MB)
    "serialize_image_data": ("serialize-image-data", "SerializeImageDataFunctionArn", 10, 256),
    "classify_image": ("classify-image", "ClassifyImageFunctionArn", 30, 256),
    "filter_inferences": ("filter-inferences", "FilterInferencesFunctionArn", 5, 128),
}
VARIANT = "AllTraffic"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.]+)"},
    {"Name": "validation:loss", "Regex": r"val_loss=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"val_acc=([0-9.]+)"},
]


class DeployError(RuntimeError):
    """A deploy step failed; the message says which and why."""


@dataclass
class DeployOptions:
    """What to deploy; every field has a CLI flag and an environment variable."""

    prefix: str = field(default_factory=lambda: os.environ.get("SCONES_NAME_PREFIX", "scones"))
    plan: bool = False
    push_image: bool = False
    skip_data: bool = False
    epochs: int = field(default_factory=lambda: int(os.environ.get("SCONES_EPOCHS", "0") or 0))
    architecture: str = field(default_factory=lambda: os.environ.get("SCONES_MODEL", "small_cnn"))
    rows_train: int = field(default_factory=lambda: int(os.environ.get("SCONES_ROWS_TRAIN", "0")))
    rows_test: int = field(default_factory=lambda: int(os.environ.get("SCONES_ROWS_TEST", "0")))
    seed: int = field(default_factory=lambda: int(os.environ.get("SCONES_SEED", "0")))
    lambda_runtime: str = field(
        default_factory=lambda: os.environ.get("SCONES_LAMBDA_RUNTIME", "python3.12")
    )
    training_instance: str = field(
        default_factory=lambda: os.environ.get("SCONES_TRAINING_INSTANCE", "ml.m5.xlarge")
    )
    endpoint_instance: str = field(
        default_factory=lambda: os.environ.get("SCONES_ENDPOINT_INSTANCE", "ml.m5.large")
    )
    training_image: str = field(default_factory=lambda: os.environ.get("SCONES_TRAINING_IMAGE", ""))
    capture_percentage: int = field(
        default_factory=lambda: int(os.environ.get("SCONES_CAPTURE_PERCENTAGE", "100"))
    )
    waiter_delay_s: int = field(
        default_factory=lambda: int(os.environ.get("SCONES_WAITER_DELAY", "2"))
    )
    # Print the training job's log lines (from CloudWatch Logs) while waiting for it.
    stream_logs: bool = True


@dataclass
class Change:
    """One line of the deploy's account: what was (or would be) done to which resource."""

    resource: str
    name: str
    action: str  # create | update | unchanged | skip
    detail: str = ""


@dataclass
class DeployResult:
    """Names and ARNs of everything deployed."""

    account_id: str
    region: str
    bucket: str
    data_prefix: str
    roles: dict[str, str] = field(default_factory=dict)
    training_job: str = ""
    model_artifact: str = ""
    serving_image: str = ""
    model_name: str = ""
    endpoint_config: str = ""
    endpoint: str = ""
    capture_uri: str = ""
    functions: dict[str, str] = field(default_factory=dict)
    state_machine_arn: str = ""
    threshold: float = 0.0
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was created or updated."""
        return any(c.action in ("create", "update") for c in self.changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (written to the state folder for later steps)."""
        data = {k: v for k, v in self.__dict__.items() if k != "changes"}
        data["changes"] = [c.__dict__ for c in self.changes]
        return data


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def reproducible_tar_gz(root: Path, include: Callable[[Path], bool]) -> bytes:
    """A .tar.gz of `root` with sorted entries, fixed times and owners: same files, same bytes."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and include(p)):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _is_source(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix in (".py", ".txt", ".json")


def _policy(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def _trust(service: str) -> str:
    return _policy(
        [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    )


def _same_policy(current: Any, wanted: str) -> bool:
    if isinstance(current, str):
        from urllib.parse import unquote

        current = json.loads(unquote(current))
    return json.dumps(current, sort_keys=True) == json.dumps(json.loads(wanted), sort_keys=True)


class Deployer:
    """Brings the target account to the wanted state, step by step, idempotently."""

    def __init__(
        self,
        settings: Settings,
        options: DeployOptions,
        image_pusher: Callable[[str, Path], None] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.options = options
        self.image_pusher = image_pusher or push_image_to_ecr
        self.echo = echo
        self._clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        """A plain boto3 client: the profile decides where it goes."""
        if name not in self._clients:
            self._clients[name] = boto3.client(name, region_name=self.settings.region)
        return self._clients[name]

    def note(
        self, result: DeployResult, resource: str, name: str, action: str, detail: str = ""
    ) -> None:
        """Record and print one change line."""
        result.changes.append(Change(resource, name, action, detail))
        verb = {"create": "+", "update": "~", "unchanged": "=", "skip": "-"}[action]
        planned = " (plan)" if self.options.plan and action in ("create", "update") else ""
        self.echo(f"  {verb} {resource:<18} {name}{planned}{'  ' + detail if detail else ''}")

    # ------------------------------------------------------------------ the whole deploy
    def deploy(self) -> DeployResult:
        """Run every step in order and return what was deployed."""
        identity = self.client("sts").get_caller_identity()
        account = identity["Account"]
        region = self.settings.region
        result = DeployResult(
            account_id=account,
            region=region,
            bucket=self.settings.bucket_for(account),
            data_prefix=self.settings.data_prefix.strip("/"),
            threshold=self.settings.threshold,
        )
        self.echo(
            f"Deploying to account {account}, region {region}"
            f"{' (plan only: nothing is changed)' if self.options.plan else ''}"
        )
        self.ensure_bucket(result)
        self.ensure_roles(result)
        self.ensure_data(result)
        self.ensure_serving_image(result)
        self.ensure_training(result)
        self.ensure_endpoint(result)
        self.ensure_functions(result)
        self.ensure_state_machine(result)
        return result

    # ------------------------------------------------------------------ bucket
    def ensure_bucket(self, result: DeployResult) -> None:
        """The workflow's bucket."""
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=result.bucket)
            self.note(result, "s3 bucket", result.bucket, "unchanged")
            return
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise DeployError(f"bucket {result.bucket}: {error}") from error
        if not self.options.plan:
            kwargs: dict[str, Any] = {"Bucket": result.bucket}
            if result.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": result.region}
            s3.create_bucket(**kwargs)
            s3.put_public_access_block(
                Bucket=result.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
        self.note(result, "s3 bucket", result.bucket, "create")

    # ------------------------------------------------------------------ IAM
    def role_policies(self, result: DeployResult) -> dict[str, tuple[str, str]]:
        """Each role's (trust policy, permissions policy), least privilege."""
        p, a, r = self.options.prefix, result.account_id, result.region
        bucket_arn = f"arn:aws:s3:::{result.bucket}"
        endpoint_arn = f"arn:aws:sagemaker:{r}:{a}:endpoint/{self.settings.endpoint_name.lower()}"

        def logs_for(function: str) -> dict[str, Any]:
            group = f"arn:aws:logs:{r}:{a}:log-group:/aws/lambda/{p}-{function}"
            return {
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [group, f"{group}:*"],
            }

        function_arns = [
            f"arn:aws:lambda:{r}:{a}:function:{p}-{suffix}"
            for suffix, *_ in LAMBDA_FUNCTIONS.values()
        ]
        lambda_trust = _trust("lambda.amazonaws.com")
        return {
            f"{p}-serialize-image-data": (
                lambda_trust,
                _policy(
                    [
                        {
                            "Effect": "Allow",
                            "Action": "s3:GetObject",
                            "Resource": f"{bucket_arn}/{result.data_prefix}/*",
                        },
                        logs_for("serialize-image-data"),
                    ]
                ),
            ),
            f"{p}-classify-image": (
                lambda_trust,
                _policy(
                    [
                        {
                            "Effect": "Allow",
                            "Action": "sagemaker:InvokeEndpoint",
                            "Resource": endpoint_arn,
                        },
                        logs_for("classify-image"),
                    ]
                ),
            ),
            f"{p}-filter-inferences": (lambda_trust, _policy([logs_for("filter-inferences")])),
            f"{p}-states": (
                _trust("states.amazonaws.com"),
                _policy(
                    [
                        {
                            "Effect": "Allow",
                            "Action": "lambda:InvokeFunction",
                            "Resource": function_arns + [f"{arn}:*" for arn in function_arns],
                        }
                    ]
                ),
            ),
            f"{p}-sagemaker": (
                _trust("sagemaker.amazonaws.com"),
                _policy(
                    [
                        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
                        {
                            "Effect": "Allow",
                            "Action": ["s3:GetObject", "s3:PutObject"],
                            "Resource": f"{bucket_arn}/*",
                        },
                        {
                            "Effect": "Allow",
                            "Action": [
                                "logs:CreateLogGroup",
                                "logs:CreateLogStream",
                                "logs:PutLogEvents",
                                "logs:DescribeLogStreams",
                            ],
                            "Resource": f"arn:aws:logs:{r}:{a}:log-group:/aws/sagemaker/*",
                        },
                        {
                            "Effect": "Allow",
                            "Action": "cloudwatch:PutMetricData",
                            "Resource": "*",
                            "Condition": {
                                "StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}
                            },
                        },
                        {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                        {
                            "Effect": "Allow",
                            "Action": [
                                "ecr:BatchCheckLayerAvailability",
                                "ecr:BatchGetImage",
                                "ecr:GetDownloadUrlForLayer",
                            ],
                            "Resource": f"arn:aws:ecr:{r}:*:repository/*",
                        },
                    ]
                ),
            ),
        }

    def ensure_roles(self, result: DeployResult) -> None:
        """Create the roles or bring their policies up to date."""
        iam = self.client("iam")
        for name, (trust, permissions) in self.role_policies(result).items():
            try:
                role = iam.get_role(RoleName=name)["Role"]
            except iam.exceptions.NoSuchEntityException:
                role = None
            arn = role["Arn"] if role else f"arn:aws:iam::{result.account_id}:role/{name}"
            result.roles[name] = arn
            changes: list[str] = []
            if role is None:
                if not self.options.plan:
                    iam.create_role(
                        RoleName=name,
                        AssumeRolePolicyDocument=trust,
                        Description="Scones Unlimited workflow (least privilege)",
                    )
                changes.append("create")
            elif not _same_policy(role["AssumeRolePolicyDocument"], trust):
                if not self.options.plan:
                    iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
                changes.append("trust policy")
            current = None
            if role is not None:
                try:
                    current = iam.get_role_policy(RoleName=name, PolicyName="permissions")[
                        "PolicyDocument"
                    ]
                except iam.exceptions.NoSuchEntityException:
                    current = None
            if current is None or not _same_policy(current, permissions):
                if not self.options.plan:
                    iam.put_role_policy(
                        RoleName=name, PolicyName="permissions", PolicyDocument=permissions
                    )
                if role is not None:
                    changes.append("permissions")
            if role is None:
                self.note(result, "iam role", name, "create")
            elif changes:
                self.note(result, "iam role", name, "update", ", ".join(changes))
            else:
                self.note(result, "iam role", name, "unchanged")

    # ------------------------------------------------------------------ data
    def ensure_data(self, result: DeployResult) -> None:
        """Stage the dataset in S3 (the ETL skips objects already there)."""
        s3 = self.client("s3")
        manifest = f"{result.data_prefix}/test/manifest.jsonl"
        present = True
        try:
            s3.head_object(Bucket=result.bucket, Key=manifest)
        except ClientError:
            present = False
        if self.options.skip_data:
            self.note(result, "dataset", f"s3://{result.bucket}/{result.data_prefix}/", "skip")
            return
        if self.options.plan:
            action = "unchanged" if present else "create"
            self.note(result, "dataset", f"s3://{result.bucket}/{result.data_prefix}/", action)
            return
        from scripts.etl.__main__ import main as etl_main

        argv = [
            "--bucket",
            result.bucket,
            "--prefix",
            result.data_prefix,
            "--classes",
            self.settings.classes,
            "--work-dir",
            str(self.settings.state_dir / "data"),
            "--seed",
            str(self.options.seed),
        ]
        if self.settings.cifar_source:
            argv += ["--source", self.settings.cifar_source]
        if self.options.rows_train:
            argv += ["--rows-train", str(self.options.rows_train)]
        if self.options.rows_test:
            argv += ["--rows-test", str(self.options.rows_test)]
        before = self._prefix_state(result)
        code = etl_main(argv)
        if code not in (0, None):
            raise DeployError(f"the ETL failed with status {code}")
        after = self._prefix_state(result)
        action = "unchanged" if before == after else ("create" if not present else "update")
        self.note(result, "dataset", f"s3://{result.bucket}/{result.data_prefix}/", action)

    def _prefix_state(self, result: DeployResult) -> str:
        s3 = self.client("s3")
        h = hashlib.sha256()
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=result.bucket, Prefix=f"{result.data_prefix}/"
        ):
            for obj in page.get("Contents", []):
                h.update(f"{obj['Key']}\0{obj['ETag']}\0".encode())
        return h.hexdigest()

    def _data_fingerprint(self, result: DeployResult) -> str:
        s3 = self.client("s3")
        tags = []
        for split in ("train", "test"):
            key = f"{result.data_prefix}/{split}/manifest.jsonl"
            try:
                tags.append(s3.head_object(Bucket=result.bucket, Key=key)["ETag"])
            except ClientError:
                tags.append("missing")
        return _digest(*tags)

    # ------------------------------------------------------------------ serving image
    def ensure_serving_image(self, result: DeployResult) -> None:
        """The model-server image URI (content-addressed); built and pushed with --push-image."""
        context = REPO_ROOT / "services" / "model_server"
        tag = _digest(reproducible_tar_gz(context, lambda p: "__pycache__" not in p.parts))[:16]
        repository = f"{self.options.prefix}-model-server"
        uri = f"{result.account_id}.dkr.ecr.{result.region}.amazonaws.com/{repository}:{tag}"
        result.serving_image = os.environ.get("SCONES_SERVING_IMAGE", "") or uri
        if not self.options.push_image:
            self.note(result, "serving image", result.serving_image, "skip", "recorded, not pushed")
            return
        ecr = self.client("ecr")
        try:
            ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
            self.note(result, "serving image", result.serving_image, "unchanged")
            return
        except ClientError as error:
            if (
                error.response["Error"]["Code"] == "RepositoryNotFoundException"
                and not self.options.plan
            ):
                ecr.create_repository(
                    repositoryName=repository,
                    imageScanningConfiguration={"scanOnPush": True},
                    imageTagMutability="IMMUTABLE",
                )
        if not self.options.plan:
            self.image_pusher(result.serving_image, context)
        self.note(result, "serving image", result.serving_image, "create", "built and pushed")

    # ------------------------------------------------------------------ training
    def training_image(self, result: DeployResult) -> str:
        """AWS's PyTorch training image for the region (the sagemaker SDK's image_uris)."""
        if self.options.training_image:
            return self.options.training_image
        from sagemaker.core import image_uris

        return str(
            image_uris.retrieve(
                framework="pytorch",
                region=result.region,
                version="2.5",
                py_version="py311",
                instance_type=self.options.training_instance,
                image_scope="training",
            )
        )

    def ensure_training(self, result: DeployResult) -> None:
        """Run the training job for this source, data and hyperparameters, unless it already ran."""
        sagemaker, s3 = self.client("sagemaker"), self.client("s3")
        source = reproducible_tar_gz(REPO_ROOT / "model", _is_source)
        source_key = f"code/sourcedir-{_digest(source)[:16]}.tar.gz"
        hyperparameters = {
            "model": self.options.architecture,
            "min-val-accuracy": str(self.settings.min_val_accuracy),
            "seed": str(self.options.seed),
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": f"s3://{result.bucket}/{source_key}",
        }
        if self.options.epochs:
            hyperparameters["epochs"] = str(self.options.epochs)
        image = self.training_image(result)
        fingerprint = _digest(
            source,
            self._data_fingerprint(result),
            json.dumps(hyperparameters, sort_keys=True),
            image,
        )
        name = f"{self.options.prefix}-train-{fingerprint[:12]}"
        result.training_job = name
        output = f"s3://{result.bucket}/models"
        try:
            job = sagemaker.describe_training_job(TrainingJobName=name)
        except ClientError as error:
            if "ValidationException" not in str(error) and "ResourceNotFound" not in str(error):
                raise
            job = None
        if job is not None and job["TrainingJobStatus"] == "Completed":
            result.model_artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
            self.note(result, "training job", name, "unchanged")
            return
        if job is not None and job["TrainingJobStatus"] in ("Failed", "Stopped"):
            raise DeployError(
                f"training job {name} ended {job['TrainingJobStatus']}: "
                f"{job.get('FailureReason', 'no reason given')}"
            )
        if self.options.plan:
            result.model_artifact = f"{output}/{name}/output/model.tar.gz"
            self.note(result, "training job", name, "create")
            return
        if job is None:
            s3.put_object(Bucket=result.bucket, Key=source_key, Body=source)

            def channel(split: str) -> dict[str, Any]:
                return {
                    "ChannelName": split,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": f"s3://{result.bucket}/{result.data_prefix}/{split}/",
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "InputMode": "File",
                }

            sagemaker.create_training_job(
                TrainingJobName=name,
                AlgorithmSpecification={
                    "TrainingImage": image,
                    "TrainingInputMode": "File",
                    "MetricDefinitions": METRIC_DEFINITIONS,
                },
                RoleArn=result.roles[f"{self.options.prefix}-sagemaker"],
                InputDataConfig=[channel("train"), channel("test")],
                OutputDataConfig={"S3OutputPath": output},
                ResourceConfig={
                    "InstanceType": self.options.training_instance,
                    "InstanceCount": 1,
                    "VolumeSizeInGB": 30,
                },
                StoppingCondition={"MaxRuntimeInSeconds": 3600},
                HyperParameters=hyperparameters,
                CheckpointConfig={"S3Uri": f"s3://{result.bucket}/checkpoints/{name}/"},
            )
            self.echo(f"    training job {name} started; waiting for it")
        started = time.monotonic()
        if self.options.stream_logs:
            job = follow_training_job(name, self.echo, self.options.waiter_delay_s)
        else:
            sagemaker.get_waiter("training_job_completed_or_stopped").wait(
                TrainingJobName=name,
                WaiterConfig={"Delay": self.options.waiter_delay_s, "MaxAttempts": 3600},
            )
            job = sagemaker.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] != "Completed":
            raise DeployError(
                f"training job {name} ended {job['TrainingJobStatus']}: "
                f"{job.get('FailureReason', 'no reason given')}"
            )
        result.model_artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
        metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        detail = f"{time.monotonic() - started:.0f}s"
        if "validation:accuracy" in metrics:
            detail += f", validation accuracy {metrics['validation:accuracy']:.3f}"
        self.note(result, "training job", name, "create", detail)

    # ------------------------------------------------------------------ hosting
    def ensure_endpoint(self, result: DeployResult) -> None:
        """Model, endpoint config with data capture, endpoint (waits until InService)."""
        sagemaker = self.client("sagemaker")
        p = self.options.prefix
        model_hash = _digest(result.model_artifact, result.serving_image)[:12]
        result.model_name = f"{p}-model-{model_hash}"
        if not self._exists(lambda: sagemaker.describe_model(ModelName=result.model_name)):
            if not self.options.plan:
                sagemaker.create_model(
                    ModelName=result.model_name,
                    PrimaryContainer={
                        "Image": result.serving_image,
                        "ModelDataUrl": result.model_artifact,
                        "Environment": {"MODEL_SERVER_WORKERS": "1"},
                    },
                    ExecutionRoleArn=result.roles[f"{p}-sagemaker"],
                )
            self.note(result, "sagemaker model", result.model_name, "create")
        else:
            self.note(result, "sagemaker model", result.model_name, "unchanged")

        result.capture_uri = f"s3://{result.bucket}/data-capture"
        capture = {
            "EnableCapture": True,
            "InitialSamplingPercentage": self.options.capture_percentage,
            "DestinationS3Uri": result.capture_uri,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
        variant = {
            "VariantName": VARIANT,
            "ModelName": result.model_name,
            "InitialInstanceCount": 1,
            "InstanceType": self.options.endpoint_instance,
            "InitialVariantWeight": 1.0,
        }
        config_hash = _digest(json.dumps([variant, capture], sort_keys=True))[:12]
        result.endpoint_config = f"{p}-epc-{config_hash}"
        if not self._exists(
            lambda: sagemaker.describe_endpoint_config(EndpointConfigName=result.endpoint_config)
        ):
            if not self.options.plan:
                sagemaker.create_endpoint_config(
                    EndpointConfigName=result.endpoint_config,
                    ProductionVariants=[variant],
                    DataCaptureConfig=capture,
                )
            self.note(result, "endpoint config", result.endpoint_config, "create")
        else:
            self.note(result, "endpoint config", result.endpoint_config, "unchanged")

        result.endpoint = self.settings.endpoint_name
        try:
            endpoint = sagemaker.describe_endpoint(EndpointName=result.endpoint)
        except ClientError:
            endpoint = None
        if endpoint is None:
            if not self.options.plan:
                sagemaker.create_endpoint(
                    EndpointName=result.endpoint, EndpointConfigName=result.endpoint_config
                )
            action = "create"
        elif endpoint["EndpointConfigName"] != result.endpoint_config:
            if not self.options.plan:
                sagemaker.update_endpoint(
                    EndpointName=result.endpoint, EndpointConfigName=result.endpoint_config
                )
            action = "update"
        elif endpoint["EndpointStatus"] == "Failed":
            raise DeployError(
                f"endpoint {result.endpoint} is Failed: {endpoint.get('FailureReason', '')}"
            )
        else:
            action = "unchanged"
        if not self.options.plan:
            started = time.monotonic()
            try:
                sagemaker.get_waiter("endpoint_in_service").wait(
                    EndpointName=result.endpoint,
                    WaiterConfig={"Delay": self.options.waiter_delay_s, "MaxAttempts": 900},
                )
            except Exception as error:
                described = sagemaker.describe_endpoint(EndpointName=result.endpoint)
                raise DeployError(
                    f"endpoint {result.endpoint} did not come InService: "
                    f"{described.get('FailureReason', error)}"
                ) from error
            if action != "unchanged":
                self.note(
                    result,
                    "endpoint",
                    result.endpoint,
                    action,
                    f"InService in {time.monotonic() - started:.0f}s",
                )
                return
        self.note(result, "endpoint", result.endpoint, action)

    @staticmethod
    def _exists(describe: Callable[[], Any]) -> bool:
        try:
            describe()
            return True
        except ClientError:
            return False

    # ------------------------------------------------------------------ Lambda
    def function_environment(self, folder: str) -> dict[str, str]:
        """Each function's environment variables (configuration, never code)."""
        if folder == "classify_image":
            return {"ENDPOINT_NAME": self.settings.endpoint_name}
        if folder == "filter_inferences":
            return {"THRESHOLD": str(self.settings.threshold)}
        return {}

    def ensure_functions(self, result: DeployResult) -> None:
        """Create each function, or update its code (if the zip changed) and configuration."""
        from lambdas.package import build_zip

        lam = self.client("lambda")
        p = self.options.prefix
        for folder, (suffix, _placeholder, timeout, memory) in LAMBDA_FUNCTIONS.items():
            name = f"{p}-{suffix}"
            zip_bytes, sha = build_zip(folder)
            role = result.roles[f"{p}-{suffix}"]
            wanted = {
                "Runtime": self.options.lambda_runtime,
                "Role": role,
                "Handler": "app.handler",
                "Timeout": timeout,
                "MemorySize": memory,
                "Environment": {"Variables": self.function_environment(folder)},
            }
            try:
                current = lam.get_function_configuration(FunctionName=name)
            except lam.exceptions.ResourceNotFoundException:
                current = None
            if current is None:
                arn = f"arn:aws:lambda:{result.region}:{result.account_id}:function:{name}"
                if not self.options.plan:
                    arn = self._retry_role_propagation(
                        lam.create_function,
                        FunctionName=name,
                        Code={"ZipFile": zip_bytes},
                        Description=f"Scones Unlimited: {suffix}",
                        **wanted,
                    )["FunctionArn"]
                result.functions[suffix] = arn
                self.note(result, "lambda function", name, "create")
                continue
            result.functions[suffix] = current["FunctionArn"]
            changes = []
            if current.get("CodeSha256") != sha:
                if not self.options.plan:
                    lam.update_function_code(FunctionName=name, ZipFile=zip_bytes)
                    self._wait_function_updated(name)
                changes.append("code")
            differing = {
                k: v
                for k, v in wanted.items()
                if (
                    current.get(k)
                    if k != "Environment"
                    else {"Variables": current.get("Environment", {}).get("Variables", {})}
                )
                != v
            }
            if differing:
                if not self.options.plan:
                    self._retry_role_propagation(
                        lam.update_function_configuration, FunctionName=name, **wanted
                    )
                    self._wait_function_updated(name)
                changes.append("configuration: " + ", ".join(sorted(differing)))
            self.note(
                result,
                "lambda function",
                name,
                "update" if changes else "unchanged",
                "; ".join(changes),
            )

    def _wait_function_updated(self, name: str) -> None:
        lam = self.client("lambda")
        # An emulator without LastUpdateStatus has nothing to wait for.
        with contextlib.suppress(Exception):
            lam.get_waiter("function_updated_v2").wait(
                FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )

    @staticmethod
    def _retry_role_propagation(call: Callable[..., Any], **kwargs: Any) -> Any:
        # A new IAM role takes a few seconds to become assumable by Lambda on AWS.
        for attempt in range(10):
            try:
                return call(**kwargs)
            except ClientError as error:
                message = str(error)
                if "cannot be assumed" not in message or attempt == 9:
                    raise
                time.sleep(min(2**attempt, 10))
        return None

    # ------------------------------------------------------------------ Step Functions
    def ensure_state_machine(self, result: DeployResult) -> None:
        """The state machine from the repository's ASL with only the placeholders replaced."""
        from statemachine.definition import render

        sfn = self.client("stepfunctions")
        values = {
            placeholder: result.functions[suffix]
            for suffix, placeholder, *_ in LAMBDA_FUNCTIONS.values()
        }
        definition = render(values)
        name = f"{self.options.prefix}-image-classification"
        role = result.roles[f"{self.options.prefix}-states"]
        arn = f"arn:aws:states:{result.region}:{result.account_id}:stateMachine:{name}"
        try:
            current = sfn.describe_state_machine(stateMachineArn=arn)
        except ClientError:
            current = None
        result.state_machine_arn = arn
        if current is None:
            if not self.options.plan:
                result.state_machine_arn = sfn.create_state_machine(
                    name=name, definition=definition, roleArn=role, type="STANDARD"
                )["stateMachineArn"]
            self.note(result, "state machine", name, "create")
        elif current["definition"] != definition or current["roleArn"] != role:
            if not self.options.plan:
                sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=role)
            self.note(result, "state machine", name, "update")
        else:
            self.note(result, "state machine", name, "unchanged")


TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def follow_training_job(
    name: str, echo: Callable[[str], None] = print, delay_s: float = 2.0
) -> dict[str, Any]:
    """Wait for a training job to end, echoing its CloudWatch log lines; return its description."""
    sagemaker, logs = boto3.client("sagemaker"), boto3.client("logs")
    tokens: dict[str, str] = {}
    terminal = ("Completed", "Failed", "Stopped")

    def drain() -> None:
        try:
            streams = logs.describe_log_streams(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{name}/"
            )["logStreams"]
        except ClientError:
            return  # no logs yet
        for stream in streams:
            stream_name = stream["logStreamName"]
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": TRAINING_LOG_GROUP,
                    "logStreamName": stream_name,
                    "startFromHead": True,
                }
                if stream_name in tokens:
                    kwargs["nextToken"] = tokens[stream_name]
                page = logs.get_log_events(**kwargs)
                for event in page["events"]:
                    echo(f"    | {event['message']}")
                token = page.get("nextForwardToken")
                if not token or token == tokens.get(stream_name):
                    break
                tokens[stream_name] = token

    while True:
        job = sagemaker.describe_training_job(TrainingJobName=name)
        drain()
        if job["TrainingJobStatus"] in terminal:
            return dict(job)
        time.sleep(delay_s)


def push_image_to_ecr(image_uri: str, context: Path) -> None:
    """Build the model-server image with the docker SDK and push it to ECR."""
    import docker

    registry = image_uri.split("/", 1)[0]
    ecr = boto3.client("ecr")
    token = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    client = docker.from_env()
    client.login(username=username, password=password, registry=f"https://{registry}")
    client.images.build(path=str(context), tag=image_uri, platform="linux/amd64", rm=True)
    repository, tag = image_uri.rsplit(":", 1)
    for line in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise DeployError(f"pushing {image_uri}: {line['error']}")


def summary(result: DeployResult) -> str:
    """The human summary printed at the end of a deploy."""
    execution_input = json.dumps(
        {"s3_bucket": result.bucket, "s3_key": f"{result.data_prefix}/test/<image>.png"}
    )
    lines = [
        "",
        "Deployed:" if result.changed else "Nothing to change: everything is up to date.",
        f"  bucket            s3://{result.bucket}/{result.data_prefix}/",
        f"  training job      {result.training_job}",
        f"  model artifact    {result.model_artifact}",
        f"  serving image     {result.serving_image}",
        f"  endpoint          {result.endpoint} ({result.endpoint_config})",
        f"  data capture      {result.capture_uri}/{result.endpoint}/{VARIANT}/",
        *[f"  lambda            {arn}" for arn in result.functions.values()],
        f"  state machine     {result.state_machine_arn}",
        f"  threshold         {result.threshold}",
        "",
        "Run it:",
        f"  aws stepfunctions start-execution --state-machine-arn {result.state_machine_arn} \\",
        f"    --name run-$(date +%s) --input '{execution_input}'",
    ]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """CLI entry point: `python -m scripts.deploy [--plan] [--push-image] ...`."""
    parser = argparse.ArgumentParser(prog="python -m scripts.deploy", description=__doc__)
    parser.add_argument(
        "--plan", action="store_true", help="list what would change; change nothing"
    )
    parser.add_argument(
        "--push-image", action="store_true", help="build and push the serving image"
    )
    parser.add_argument("--skip-data", action="store_true", help="do not run the ETL")
    parser.add_argument("--epochs", type=int, help="training epochs (default: train.py's)")
    parser.add_argument("--model", dest="architecture", help="small_cnn (default) or resnet18")
    parser.add_argument("--rows-train", type=int, help="synthetic archive rows (default 50,000)")
    parser.add_argument("--rows-test", type=int, help="synthetic archive rows (default 10,000)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    options = DeployOptions(plan=args.plan, push_image=args.push_image, skip_data=args.skip_data)
    for name in ("epochs", "architecture", "rows_train", "rows_test"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    settings = load()
    try:
        result = Deployer(settings, options).deploy()
    except (DeployError, ClientError) as error:
        print(f"\ndeploy failed: {error}", file=sys.stderr)
        return 1
    if not options.plan:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        (settings.state_dir / "deploy.json").write_text(json.dumps(result.to_json(), indent=2))
        print(summary(result))
    else:
        pending = [c for c in result.changes if c.action in ("create", "update")]
        print(f"\nPlan: {len(pending)} change(s); run without --plan to apply.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
