"""The workflow's bucket and the staged dataset (the ETL, resumable: it heals missing objects)."""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import ClientError

from scones.deploy.context import DeployContext, DeployError, DeployResult, digest


def ensure_bucket(ctx: DeployContext, result: DeployResult) -> None:
    """The workflow's bucket, private."""
    s3 = ctx.client("s3")
    try:
        s3.head_bucket(Bucket=result.bucket)
        ctx.note(result, "s3 bucket", result.bucket, "unchanged")
        return
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise DeployError(f"bucket {result.bucket}: {error}") from error
    if not ctx.options.plan:
        kwargs: dict[str, Any] = {"Bucket": result.bucket}
        if result.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": result.region}
        s3.create_bucket(**kwargs)
        ctx.wait("s3", "bucket_exists", f"bucket {result.bucket}", lambda: "", Bucket=result.bucket)
        s3.put_public_access_block(
            Bucket=result.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    ctx.note(result, "s3 bucket", result.bucket, "create")


def etl_arguments(ctx: DeployContext, result: DeployResult) -> list[str]:
    """The ETL's command line for this deploy's bucket, prefix and settings."""
    settings = ctx.settings
    argv = [
        "--bucket",
        result.bucket,
        "--prefix",
        result.data_prefix,
        "--classes",
        settings.classes,
        "--work-dir",
        str(settings.state_dir / "data"),
        "--seed",
        str(settings.seed),
    ]
    if settings.cifar_source:
        argv += ["--source", settings.cifar_source]
    if settings.rows_train:
        argv += ["--rows-train", str(settings.rows_train)]
    if settings.rows_test:
        argv += ["--rows-test", str(settings.rows_test)]
    return argv


def ensure_data(ctx: DeployContext, result: DeployResult) -> None:
    """Stage the dataset in S3; the ETL skips objects already there and re-uploads lost ones."""
    s3 = ctx.client("s3")
    where = f"s3://{result.bucket}/{result.data_prefix}/"
    manifest = f"{result.data_prefix}/test/manifest.jsonl"
    present = True
    try:
        s3.head_object(Bucket=result.bucket, Key=manifest)
    except ClientError:
        present = False
    if ctx.options.skip_data:
        ctx.note(result, "dataset", where, "skip")
        return
    if ctx.options.plan:
        ctx.note(result, "dataset", where, "unchanged" if present else "create")
        return
    from scones.etl.__main__ import main as etl_main

    before = prefix_state(ctx, result)
    code = etl_main(etl_arguments(ctx, result))
    if code not in (0, None):
        raise DeployError(f"the ETL failed with status {code}")
    after = prefix_state(ctx, result)
    if before == after:
        ctx.note(result, "dataset", where, "unchanged")
    elif not present:
        ctx.note(result, "dataset", where, "create")
    else:
        ctx.note(result, "dataset", where, "heal", "re-uploaded missing or changed objects")


def prefix_state(ctx: DeployContext, result: DeployResult) -> str:
    """A digest of every key and ETag under the dataset prefix."""
    h = hashlib.sha256()
    for page in (
        ctx.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=result.bucket, Prefix=f"{result.data_prefix}/")
    ):
        for obj in page.get("Contents", []):
            h.update(f"{obj['Key']}\0{obj['ETag']}\0".encode())
    return h.hexdigest()


def data_fingerprint(ctx: DeployContext, result: DeployResult) -> str:
    """What the training job depends on in the data: the two manifests' ETags."""
    s3 = ctx.client("s3")
    tags = []
    for split in ("train", "test"):
        key = f"{result.data_prefix}/{split}/manifest.jsonl"
        try:
            tags.append(s3.head_object(Bucket=result.bucket, Key=key)["ETag"])
        except ClientError:
            tags.append("missing")
    return digest(*tags)
