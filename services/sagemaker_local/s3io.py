"""S3 transfers shared by training (channels, code, checkpoints, artifacts) and hosting (models).

Keys are untrusted: a key whose relative path would leave the target folder is refused.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DOWNLOAD_THREADS = 8


class UnsafeKey(ValueError):
    """An S3 key that would be written outside the target folder."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith(("s3://", "https://")):
        raise ValueError(f"not an S3 URI: {uri}")
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def join_s3(uri: str, *parts: str) -> str:
    """Join path parts onto an S3 URI with single slashes."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def local_path_for(target: Path, relative: str) -> Path:
    """Where a relative key goes under target; refuses absolute paths and `..` escapes."""
    relative = relative.lstrip("/")
    if not relative or any(p == ".." for p in relative.split("/")):
        raise UnsafeKey(f"refusing S3 key path {relative!r}")
    dest = Path(os.path.normpath(target / relative))
    if not dest.is_relative_to(target):
        raise UnsafeKey(f"refusing S3 key path {relative!r}")
    return dest


def list_keys(s3: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """Every (key, size) under a prefix, folder markers left out."""
    keys: list[tuple[str, int]] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                keys.append((obj["Key"], int(obj.get("Size", 0))))
    return keys


def download_prefix(s3: Any, uri: str, target: Path, max_bytes: int | None = None) -> int:
    """Download an S3 prefix (or one object) into target as the SageMaker local SDK lays it out.

    The part of each key after the prefix becomes its path under target; a URI naming exactly
    one object lands as `target/<basename>`. Returns the number of files.
    """
    bucket, prefix = split_s3_uri(uri)
    target.mkdir(parents=True, exist_ok=True)
    keys = list_keys(s3, bucket, prefix)
    jobs: list[tuple[str, Path]] = []
    total = 0
    for key, size in keys:
        relative = key[len(prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]
        jobs.append((key, local_path_for(target, relative)))
        total += size
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"{uri} holds {total} bytes, above the limit of {max_bytes}")

    def fetch(job: tuple[str, Path]) -> None:
        key, dest = job
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch, jobs))
    return len(jobs)


def manifest_entries(manifest: Any, target: Path) -> list[tuple[str, Path]]:
    """(S3 URI, local path) of each entry of a ManifestFile channel, all inside target.

    A manifest is `[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]`; it is data from
    S3, so an entry that is absolute or climbs out with `..` is refused rather than written.
    """
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise UnsafeKey('a manifest must be a JSON list starting with {"prefix": "s3://..."}')
    base = manifest[0].get("prefix")
    if not isinstance(base, str):
        raise UnsafeKey('the manifest\'s first element must be {"prefix": "s3://..."}')
    split_s3_uri(base)
    entries = []
    for relative in manifest[1:]:
        if not isinstance(relative, str) or not relative or relative.startswith("/"):
            raise UnsafeKey(f"manifest entry {relative!r} is not a relative key")
        entries.append((base + relative if base.endswith("/") else join_s3(base, relative),
                        local_path_for(target, relative)))  # fmt: skip
    return entries


def download_manifest(s3: Any, manifest_uri: str, target: Path) -> int:
    """Download the objects a ManifestFile lists into target; returns the number of files."""
    bucket, key = split_s3_uri(manifest_uri)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    entries = manifest_entries(manifest, target)

    def fetch(entry: tuple[str, Path]) -> None:
        uri, dest = entry
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(*split_s3_uri(uri), str(dest))

    target.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch, entries))
    return len(entries)


def upload_folder(s3: Any, folder: Path, uri: str) -> int:
    """Upload every file under folder to an S3 prefix; returns the number of files."""
    bucket, prefix = split_s3_uri(uri)
    files = [p for p in folder.rglob("*") if p.is_file()]

    def put(path: Path) -> None:
        key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(folder).as_posix()]))
        s3.upload_file(str(path), bucket, key)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(put, files))
    return len(files)
