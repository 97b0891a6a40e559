"""Benchmark the trainer and the ETL.

    python benchmarks/bench_train.py [--device cpu|cuda] [--models small_cnn,resnet18]
                                     [--classes bicycle,motorcycle|all] [--skip-etl] ...

1. ETL: time to generate the synthetic archive (cached afterwards), then extract + transform for
   the default two-class subset and for all 100 classes (local files; `--bucket` adds the upload
   through the ambient AWS profile).
2. Trainer throughput: images/s of `model/train.py`'s own training epoch (batch gather, crop/flip
   augmentation, per-step learning rate, loss tracking) against a bare loop over the same model,
   optimiser and data (pre-normalised tensor, no augmentation), alternating runs on the same
   machine. The ratio trainer / bare is the overhead figure (goal >= 0.85).
Prints a table; `--json` writes the figures too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import networks, train  # noqa: E402
from scones.etl import archive, synthetic, transform  # noqa: E402


def time_etl(
    work_dir: Path, classes: str, rows_train: int, rows_test: int, bucket: str
) -> dict[str, float]:
    """Seconds for generation (first time only), extract and transform (and upload)."""
    started = time.perf_counter()
    path, md5 = synthetic.ensure_archive(work_dir, 0, rows_train, rows_test)
    generated = time.perf_counter()
    dataset = archive.read_archive(path, md5)
    extracted = time.perf_counter()
    chosen = transform.select_classes(classes, dataset.fine_label_names)
    out_dir = work_dir / f"dataset-{'all' if classes == 'all' else 'subset'}"
    summaries = transform.transform(dataset, chosen, out_dir)
    transformed = time.perf_counter()
    figures = {
        "archive_s": generated - started,
        "extract_s": extracted - generated,
        "transform_s": transformed - extracted,
        "images": sum(s.images for s in summaries.values()),
    }
    if bucket:
        from scones.etl import load

        summary = load.upload_folder(out_dir, bucket, f"bench/{out_dir.name}", progress=False)
        figures["upload_s"] = summary.seconds
    return figures


def bare_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    bf16: bool,
) -> float:
    """The plainest loop over the same data: seconds for one epoch."""
    model.train()
    order = torch.randperm(len(labels), device=labels.device)
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        index = order[i : i + batch_size]
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs[index])
        loss = F.cross_entropy(logits.float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if inputs.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_throughput(
    data_dir: Path,
    model_name: str,
    device: torch.device,
    batch_size: int,
    rounds: int,
    threads: int,
) -> dict[str, float]:
    """Best-of-rounds images/s for the trainer's epoch and the bare loop, alternating."""
    args = train.parse_args(
        [
            "--model",
            model_name,
            "--batch-size",
            str(batch_size),
            "--epochs",
            str(rounds + 1),
            "--threads",
            str(threads),
            "--train",
            str(data_dir / "train"),
            "--test",
            str(data_dir / "test"),
        ]
    )
    data = train.load_channel(data_dir / "train")
    _, mean, std = train.read_stats(data_dir / "train", data.images)
    data.images, data.labels = data.images.to(device), data.labels.to(device)
    bf16 = device.type == "cuda" and args.bf16
    normalise = train.Normaliser(mean, std, device, args.channels_last)
    pre_normalised = normalise(data.images)
    augmenter = train.Augmenter(data.images)

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = networks.build_network(model_name, len(data.class_names)).to(device)
        model = model.to(memory_format=torch.channels_last)
        return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    trainer_model, trainer_opt = fresh()
    bare_model, bare_opt = fresh()
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    # Warm-up epoch each (allocator, cuDNN autotuning, first-touch), then alternate.
    train.train_epoch(trainer_model, trainer_opt, criterion, data, augmenter, normalise, args, 1)
    bare_epoch(bare_model, bare_opt, pre_normalised, data.labels, batch_size, bf16)
    # Wall time is what counts; CPU time of this process is reported too because on a shared
    # machine it is far less disturbed by other processes (with one thread it is the work done).
    trainer_s, bare_s, trainer_cpu, bare_cpu = [], [], [], []
    for r in range(rounds):
        cpu = time.process_time()
        trainer_s.append(
            train.train_epoch(
                trainer_model, trainer_opt, criterion, data, augmenter, normalise, args, r + 2
            ).seconds
        )
        trainer_cpu.append(time.process_time() - cpu)
        cpu = time.process_time()
        bare_s.append(
            bare_epoch(bare_model, bare_opt, pre_normalised, data.labels, batch_size, bf16)
        )
        bare_cpu.append(time.process_time() - cpu)
    n = len(data.labels)
    trainer_ips, bare_ips = n / min(trainer_s), n / min(bare_s)
    return {
        "images": n,
        "trainer_ips": trainer_ips,
        "bare_ips": bare_ips,
        "ratio": trainer_ips / bare_ips,
        "ratio_cpu_time": min(bare_cpu) / min(trainer_cpu),
    }


def main() -> int:
    """Run the benchmarks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / ".state" / "bench")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="small_cnn")
    parser.add_argument(
        "--classes", default="bicycle,motorcycle", help="data for the throughput runs"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rows-train", type=int, default=synthetic.DEFAULT_ROWS_TRAIN)
    parser.add_argument("--rows-test", type=int, default=synthetic.DEFAULT_ROWS_TEST)
    parser.add_argument("--skip-etl", action="store_true")
    parser.add_argument("--data-dir", type=Path, help="ETL output (train/, test/) to train on")
    parser.add_argument("--bucket", default="", help="also time the upload to this bucket")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        train.choose_device(train.parse_args(["--device", "cpu", "--threads", str(args.threads)]))
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    rows = []
    etl_runs = [] if args.skip_etl else ["bicycle,motorcycle", "all"]
    if args.classes not in etl_runs and not args.data_dir:
        etl_runs.append(args.classes)
    for classes in etl_runs:
        figures = time_etl(args.work_dir, classes, args.rows_train, args.rows_test, args.bucket)
        results[f"etl[{classes}]"] = figures
        extra = f", upload {figures['upload_s']:.1f} s" if "upload_s" in figures else ""
        rows.append(
            (
                f"ETL {classes}",
                f"{int(figures['images'])} images",
                f"archive {figures['archive_s']:.1f} s, extract {figures['extract_s']:.1f} s, "
                f"transform {figures['transform_s']:.1f} s{extra}",
            )
        )
    data_dir = (
        args.data_dir or args.work_dir / f"dataset-{'all' if args.classes == 'all' else 'subset'}"
    )
    for model_name in args.models.split(","):
        speed = bench_throughput(
            data_dir, model_name, device, args.batch_size, args.rounds, args.threads
        )
        results[f"throughput[{model_name}]"] = speed
        rows.append(
            (
                f"train {model_name} ({args.device}, bs {args.batch_size})",
                f"{int(speed['images'])} images/epoch",
                f"trainer {speed['trainer_ips']:.0f} img/s, "
                f"bare {speed['bare_ips']:.0f} img/s, "
                f"ratio {speed['ratio']:.3f} (cpu-time ratio {speed['ratio_cpu_time']:.3f})",
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"device: {results['device']}, torch threads: {results['threads']}")
    for name, size, text in rows:
        print(f"{name:<{width}}  {size:>18}  {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
