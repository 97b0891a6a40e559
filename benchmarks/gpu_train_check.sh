#!/usr/bin/env bash
# GPU check of the trainer, one prepared run (< 8 minutes on one H100):
#   1. synthetic CIFAR-100 archive (default 50,000/10,000 rows) and the ETL of the default
#      two-class subset and of all 100 classes (local files, no upload);
#   2. model/train.py on CUDA, default configuration, for small_cnn and resnet18: wall time,
#      final validation accuracy, training images/s;
#   3. benchmarks/bench_train.py on CUDA over all 100 classes (50,000 training images): trainer
#      images/s against a bare loop over the same model and data, for both models.
# Usage: bash benchmarks/gpu_train_check.sh
# Environment: PYTHON (default python3), WORK (default a fresh temporary folder),
#   GPU_CHECK_QUICK=1 shrinks everything and runs on the CPU (a smoke test of this script).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d -t gpu-train-check.XXXXXX)}
if [[ "${GPU_CHECK_QUICK:-0}" == 1 ]]; then
  DEVICE=cpu ROWS=(--rows-train 2000 --rows-test 1000) TRAIN_EXTRA=(--epochs 1 --threads 2)
  BENCH_EXTRA=(--rounds 1 --batch-size 64 --threads 2) BENCH_MODELS=small_cnn
else
  DEVICE=cuda ROWS=() TRAIN_EXTRA=() BENCH_EXTRA=(--rounds 3 --batch-size 512)
  BENCH_MODELS=small_cnn,resnet18
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$WORK"
echo "== work folder: $WORK"
if [[ "$DEVICE" == cuda ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"

seconds() { date +%s.%N; }
elapsed() { "$PYTHON" -c "print(f'{$(seconds) - $1:.1f}')"; }

echo "== ETL: default subset (generates the archive), then all 100 classes from the same archive"
t=$(seconds)
"$PYTHON" -m scones.etl --work-dir "$WORK/subset" --no-upload --no-progress "${ROWS[@]}"
echo "etl subset (with archive generation): $(elapsed "$t") s"
archive="$WORK/subset/cifar-100-python.tar.gz"
t=$(seconds)
"$PYTHON" -m scones.etl --work-dir "$WORK/all" --no-upload --no-progress --classes all \
  --source "$archive" --md5 "$(cat "$archive.md5")"
echo "etl all classes (archive given): $(elapsed "$t") s"

summary=()
for model in small_cnn resnet18; do
  echo "== train.py --model $model on $DEVICE (default configuration)"
  job="$WORK/job-$model"
  t=$(seconds)
  SM_CHANNEL_TRAIN="$WORK/subset/dataset/train" SM_CHANNEL_TEST="$WORK/subset/dataset/test" \
  SM_MODEL_DIR="$job/model" SM_OUTPUT_DIR="$job/output" \
    "$PYTHON" model/train.py --model "$model" --device "$DEVICE" \
      --checkpoint-dir "$job/checkpoints" "${TRAIN_EXTRA[@]}" | tee "$job.log"
  wall=$(elapsed "$t")
  acc=$(grep -o 'final val_acc=[0-9.]*' "$job.log" | cut -d= -f2)
  ips=$(grep -o 'images_per_sec=[0-9.]*' "$job.log" | tail -1 | cut -d= -f2)
  summary+=("train $model: wall ${wall} s, val_acc ${acc}, last-epoch ${ips} images/s")
done

echo "== bench_train.py on $DEVICE, all 100 classes"
"$PYTHON" benchmarks/bench_train.py --device "$DEVICE" --models "$BENCH_MODELS" \
  --skip-etl --data-dir "$WORK/all/dataset" "${BENCH_EXTRA[@]}" --json "$WORK/bench.json"

echo "== summary"
printf '%s\n' "${summary[@]}"
if [[ -n "${OUT:-}" ]]; then cp "$WORK/bench.json" "$WORK"/job-*.log "$OUT"/ 2>/dev/null || true; fi
