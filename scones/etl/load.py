"""Load: upload a folder to `s3://bucket/prefix/` in parallel, resumably, with a progress bar.

An object already present under the same key with the same size and an ETag equal to the file's
MD5 (a single-part upload's ETag) is skipped, so a rerun after an interruption uploads only what
is missing or changed. Clients are plain `boto3.client("s3")`: the AWS profile picks the target.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from tqdm import tqdm


@dataclass(frozen=True)
class UploadSummary:
    """What an upload did."""

    uploaded: int
    skipped: int
    bytes: int
    seconds: float

    def line(self) -> str:
        """The one-line summary printed at the end of a load."""
        return (
            f"load: {self.uploaded} objects uploaded, {self.skipped} skipped, "
            f"{self.bytes} bytes uploaded in {self.seconds:.1f} s"
        )


def s3_client(workers: int) -> Any:
    """An S3 client with a connection pool as large as the thread pool."""
    return boto3.client("s3", config=Config(max_pool_connections=max(10, workers)))


def ensure_bucket(s3: Any, bucket: str) -> None:
    """Create the bucket when it does not exist (idempotent)."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    region = s3.meta.region_name
    if region and region != "us-east-1":
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        s3.create_bucket(Bucket=bucket)


def existing_objects(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Key -> (size, ETag without quotes) of every object under the prefix."""
    found: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = (int(obj["Size"]), str(obj["ETag"]).strip('"'))
    return found


def _content_type(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "application/jsonl"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def object_key(prefix: str, relative: Path) -> str:
    """The S3 key of a file given its path relative to the uploaded folder."""
    return "/".join(part for part in (prefix.strip("/"), relative.as_posix()) if part)


def upload_folder(
    folder: Path, bucket: str, prefix: str, workers: int = 16, progress: bool = True
) -> UploadSummary:
    """Upload every file under folder to s3://bucket/prefix/<relative path>, skipping equal ones."""
    start = time.perf_counter()
    s3 = s3_client(workers)
    ensure_bucket(s3, bucket)
    present = existing_objects(s3, bucket, prefix.strip("/"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def upload(path: Path) -> int:
        payload = path.read_bytes()
        key = object_key(prefix, path.relative_to(folder))
        digest = hashlib.md5(payload, usedforsecurity=False)
        if present.get(key) == (len(payload), digest.hexdigest()):
            return -1
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=payload,
            ContentType=_content_type(path),
            ContentMD5=base64.b64encode(digest.digest()).decode(),
        )
        return len(payload)

    uploaded = skipped = sent = 0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=len(files), unit="obj", desc=f"s3://{bucket}/{prefix}", disable=not progress
        ) as bar,
    ):
        for future in as_completed([pool.submit(upload, path) for path in files]):
            size = future.result()
            if size < 0:
                skipped += 1
            else:
                uploaded, sent = uploaded + 1, sent + size
            bar.update()
    return UploadSummary(uploaded, skipped, sent, time.perf_counter() - start)
