"""Model data of a container: downloaded from S3 and unpacked under `<state>/models/<model>/`.

An unchanged archive (same URI and ETag) is not downloaded again; a new copy is staged next to
the target and renamed into place, so a model server never sees a half-unpacked model.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from .archive import MAX_MODEL_BYTES, ModelArchiveError, safe_extract
from .s3io import download_prefix, split_s3_uri

SOURCE_MARKER = ".sagemaker-local-source.json"


def model_source(container: dict[str, Any]) -> tuple[str, str, bool]:
    """(S3 URI, kind "archive"|"prefix", compressed) of a container's model data."""
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"], "archive", True
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source:
        compressed = source.get("CompressionType", "None") == "Gzip"
        kind = "archive" if source.get("S3DataType") == "S3Object" else "prefix"
        return source["S3Uri"], kind, compressed
    return "", "none", False


def prepare_model(s3: Any, container: dict[str, Any], target: Path) -> Path:
    """Download and unpack a container's model data into target, reusing an identical copy."""
    uri, kind, compressed = model_source(container)
    marker = target / SOURCE_MARKER
    if not uri:
        target.mkdir(parents=True, exist_ok=True)
        return target
    try:
        bucket, key = split_s3_uri(uri)
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"] if kind == "archive" else None
    except Exception as exc:  # any S3 failure is the model's failure reason
        raise ModelArchiveError(f'Could not access model data at "{uri}": {exc}') from exc
    source = {"uri": uri, "etag": etag}
    if etag and marker.exists():
        try:
            if json.loads(marker.read_text()) == source:
                return target
        except ValueError:
            pass
    staging = target.with_name(f".{target.name}.{os.getpid()}.{time.time_ns()}")
    try:
        staging.mkdir(parents=True)
        if kind == "archive":
            archive = staging.with_suffix(".download")
            s3.download_file(bucket, key, str(archive))
            try:
                if compressed or tarfile.is_tarfile(archive):
                    safe_extract(archive, staging)
                else:
                    shutil.copy(archive, staging / PurePosixPath(key).name)
            finally:
                archive.unlink(missing_ok=True)
        else:
            download_prefix(s3, uri, staging, max_bytes=MAX_MODEL_BYTES)
        (staging / SOURCE_MARKER).write_text(json.dumps(source))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except ModelArchiveError as exc:
        raise ModelArchiveError(
            f'Failed to extract model data archive from URL "{uri}". '
            f"Please ensure that the object located at the URL is a valid tar.gz archive: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelArchiveError(f'Failed to download model data from URL "{uri}": {exc}') from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
