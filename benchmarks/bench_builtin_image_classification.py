"""Benchmark the built-in image-classification algorithm as the course's notebook runs it.

    python benchmarks/bench_builtin_image_classification.py [--epochs 30] [--rows-train 50000]
                                                            [--hps '{"learning_rate": "0.001"}']

1. ETL: the synthetic CIFAR-100 archive (cached) -> the default subset (bicycle, motorcycle:
   1000 train, 200 test PNGs), written as the course does: `train/`, `validation/` images and
   `train_lst/`, `validation_lst/` `.lst` files (index, label, file name).
2. Baseline: the algorithm alone on a prepared /opt/ml folder (a direct process, no service).
3. The job: a real local_aws + sagemaker-local; CreateTrainingJob with the algorithm's image URI
   and the course's hyperparameters; wall time from CreateTrainingJob to Completed and the
   final `validation:accuracy` from FinalMetricDataList.
Prints the figures and the ratio job / baseline (the service's overhead); the goal is
validation:accuracy >= 0.93 within 60 s for the job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from scones.etl import archive, synthetic, transform  # noqa: E402
from scones.stack import free_port, start_service, stop_process_group, wait_for_health  # noqa: E402
from scones.testing import selected_profile, start_local_aws  # noqa: E402
from services.local_aws.profile import write_profile  # noqa: E402

IMAGE = "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
CLASSES = ["bicycle", "motorcycle"]
CHANNELS = {"train": "train", "test": "validation"}
RESOURCES = {"InstanceType": "ml.p2.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5}


def channel(name: str) -> dict[str, object]:
    """An S3Prefix image channel under s3://bench-ic/course/."""
    source = {
        "S3DataType": "S3Prefix",
        "S3Uri": f"s3://bench-ic/course/{name}/",
        "S3DataDistributionType": "FullyReplicated",
    }
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": source},
        "ContentType": "application/x-image",
    }


def course_layout(work_dir: Path, rows_train: int, rows_test: int) -> Path:
    """The default subset as the course's notebook lays it out; the folder holding the channels."""
    path, md5 = synthetic.ensure_archive(work_dir, 0, rows_train, rows_test)
    out = work_dir / "dataset"
    if not out.exists():
        dataset = archive.read_archive(path, md5)
        transform.transform(
            dataset, transform.select_classes(CLASSES, dataset.fine_label_names), out
        )
    channels = work_dir / "course"
    shutil.rmtree(channels, ignore_errors=True)
    for split, channel in CHANNELS.items():
        images, lists = channels / channel, channels / f"{channel}_lst"
        images.mkdir(parents=True)
        lists.mkdir()
        lines = []
        for index, png in enumerate(sorted((out / split).glob("*.png"))):
            shutil.copyfile(png, images / png.name)
            lines.append(f"{index}\t{CLASSES.index(png.name.split('_s_')[0])}\t{png.name}")
        (lists / f"{channel}.lst").write_text("\n".join(lines) + "\n")
    return channels


def baseline(channels: Path, hps: dict[str, str], work: Path) -> float:
    """Seconds of the algorithm alone on an /opt/ml-like folder."""
    root = work / "opt-ml"
    shutil.copytree(channels, root / "input" / "data")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    content = {c: {"ContentType": "application/x-image"} for c in ("train", "validation")}
    (config / "inputdataconfig.json").write_text(json.dumps(content))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "services.sagemaker_local.algorithms.image_classification.train",
         "--ml-root", str(root)],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def job(channels: Path, hps: dict[str, str], work: Path) -> dict[str, float]:
    """Run the job on a real local stack; its wall time, training time and final metrics."""
    aws = start_local_aws(work / "aws")
    port = free_port()
    env = write_profile(
        work / "profile", aws.endpoint_url, sagemaker_endpoint=f"http://127.0.0.1:{port}"
    )
    log_path = work / "sagemaker-local.log"
    service = start_service(
        "services.sagemaker_local",
        ["--port", str(port), "--state-dir", str(work / "sm")],
        log_path,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}/_health", service, log_path)
        with selected_profile(env):
            s3, sm = boto3.client("s3"), boto3.client("sagemaker")
            s3.create_bucket(Bucket="bench-ic")
            for path in sorted(channels.rglob("*")):
                if path.is_file():
                    s3.upload_file(str(path), "bench-ic", f"course/{path.relative_to(channels)}")
            name = f"bench-ic-{int(time.time())}"
            started = time.perf_counter()
            sm.create_training_job(
                TrainingJobName=name,
                AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
                RoleArn="arn:aws:iam::123456789012:role/bench",
                HyperParameters=hps,
                InputDataConfig=[
                    channel(c) for c in ("train", "validation", "train_lst", "validation_lst")
                ],
                OutputDataConfig={"S3OutputPath": "s3://bench-ic/models"},
                ResourceConfig=RESOURCES,
                StoppingCondition={"MaxRuntimeInSeconds": 3600},
            )
            while True:
                described = sm.describe_training_job(TrainingJobName=name)
                if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                    break
                time.sleep(0.2)
            wall = time.perf_counter() - started
            if described["TrainingJobStatus"] != "Completed":
                raise SystemExit(
                    f"job {described['TrainingJobStatus']}: {described.get('FailureReason')}"
                )
            metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
            for step in described["SecondaryStatusTransitions"]:  # where the time goes
                if "EndTime" in step:
                    seconds = (step["EndTime"] - step["StartTime"]).total_seconds()
                    metrics[f"{step['Status'].lower()}_s"] = seconds
            return {
                "job_wall_s": wall,
                "training_time_s": described["TrainingTimeInSeconds"],
                **metrics,
            }
    finally:
        stop_process_group(service)
        stop_process_group(aws.process)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="30")
    parser.add_argument("--rows-train", type=int, default=synthetic.DEFAULT_ROWS_TRAIN)
    parser.add_argument("--rows-test", type=int, default=synthetic.DEFAULT_ROWS_TEST)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".state" / "bench-ic")
    parser.add_argument("--hps", default="{}", help="extra hyperparameters (JSON object)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    channels = course_layout(args.work_dir, args.rows_train, args.rows_test)
    images = len(list((channels / "train").glob("*.png")))
    hps = {"image_shape": "3,32,32", "num_classes": "2", "num_training_samples": str(images),
           "epochs": args.epochs, **json.loads(args.hps)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        figures: dict[str, float] = {"train_images": images}
        if not args.skip_baseline:
            figures["baseline_s"] = baseline(channels, hps, Path(tmp))
        figures.update(job(channels, hps, Path(tmp)))
    if "baseline_s" in figures:
        figures["job_over_baseline"] = figures["job_wall_s"] / figures["baseline_s"]
    print(json.dumps({"hyperparameters": hps, **figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
