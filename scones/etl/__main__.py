"""`python -m scones.etl`: stage CIFAR-100 in S3 (extract, transform, load).

    python -m scones.etl [--source PATH_OR_URL] [--classes bicycle,motorcycle|all]
                          [--bucket B] [--prefix P] [--work-dir D] [--rows-train N --rows-test N]
                          [--seed S] [--no-upload]

Defaults come from `scones/settings.py` (`SCONES_*` variables). Without a source, a synthetic
archive in the official format is generated into the work folder (kept and reused while its MD5
and parameters match) and read by the same verifying code, with its own recorded MD5 as the
expected one; with a source, the official MD5 is expected.

Local output `<work-dir>/dataset/` and, unless `--no-upload`, the same tree in S3:
    s3://B/P/train/<name>.png    s3://B/P/train/manifest.jsonl    s3://B/P/train/stats.json
    s3://B/P/test/<name>.png     s3://B/P/test/manifest.jsonl
`s3://B/P/train/` and `s3://B/P/test/` are the training job's `train` and `test` channels.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from scones import settings as settings_module
from scones.etl import archive, load, synthetic, transform

DATASET_FOLDER = "dataset"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options, defaulting to the project settings."""
    settings = settings_module.load()
    parser = argparse.ArgumentParser(
        prog="python -m scones.etl", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--source",
        default=settings.cifar_source,
        help="path or URL of cifar-100-python.tar.gz; empty: synthetic",
    )
    parser.add_argument("--md5", default=archive.OFFICIAL_MD5, help="expected MD5 of --source")
    parser.add_argument("--classes", default=settings.classes, help="comma-separated or 'all'")
    parser.add_argument(
        "--bucket", default=settings.bucket, help="default: derived from the account"
    )
    parser.add_argument("--prefix", default=settings.data_prefix)
    parser.add_argument("--work-dir", type=Path, default=settings.state_dir / "data")
    parser.add_argument("--rows-train", type=int, default=synthetic.DEFAULT_ROWS_TRAIN)
    parser.add_argument("--rows-test", type=int, default=synthetic.DEFAULT_ROWS_TEST)
    parser.add_argument("--seed", type=int, default=0, help="synthetic archive seed")
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads")
    parser.add_argument("--no-upload", action="store_true", help="stop after the local files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def resolve_bucket(bucket: str) -> str:
    """The configured bucket, or `scones-unlimited-<account>-<region>` through STS."""
    if bucket:
        return bucket
    account = boto3.client("sts").get_caller_identity()["Account"]
    return settings_module.load().bucket_for(account)


def run(args: argparse.Namespace) -> int:
    """Extract, transform and (optionally) load; prints one line per stage."""
    started = time.perf_counter()
    if args.source:
        path = archive.fetch(args.source, args.work_dir, args.md5)
        expected = args.md5
    else:
        path, expected = synthetic.ensure_archive(
            args.work_dir, args.seed, args.rows_train, args.rows_test
        )
    dataset = archive.read_archive(path, expected)
    extracted = time.perf_counter()
    print(f"extract: {path} (md5 {expected}) in {extracted - started:.1f} s", flush=True)

    classes = transform.select_classes(args.classes, dataset.fine_label_names)
    out_dir = args.work_dir / DATASET_FOLDER
    summaries = transform.transform(dataset, classes, out_dir)
    transformed = time.perf_counter()
    counts = ", ".join(f"{name} {s.images} images" for name, s in summaries.items())
    print(
        f"transform: {len(classes)} classes, {counts} -> {out_dir} "
        f"in {transformed - extracted:.1f} s",
        flush=True,
    )

    if not args.no_upload:
        bucket = resolve_bucket(args.bucket)
        summary = load.upload_folder(
            out_dir, bucket, args.prefix, args.workers, not args.no_progress
        )
        print(f"{summary.line()} -> s3://{bucket}/{args.prefix.strip('/')}/", flush=True)
    print(f"etl: done in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; a typed ETL error becomes a one-line message and status 1."""
    args = parse_args(argv)
    try:
        return run(args)
    except (archive.ArchiveError, transform.UnknownClassError) as exc:
        print(f"etl: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    except (BotoCoreError, ClientError) as exc:
        print(
            f"etl: S3 upload failed ({exc}); is the AWS profile's target up? "
            "(--no-upload keeps the local files only)",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
