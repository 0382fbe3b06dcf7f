#!/usr/bin/env bash
# GPU checks in one go, for a machine with one CUDA GPU (no internet needed):
#   1. batch vs per-image target assignment on the GPU; `fcosdet train` launched by torchrun
#      on 1 GPU: the process group is NCCL, and the training throughput (images/s) at fp32 and
#      bf16, ResNet-18 FPN-256, 320x448, batch 16;
#   2. the bccd side-by-side benchmark (24 epochs, width 256) for both presets and torchvision's
#      FCOS, plus the baseline with one trick of the improved preset at a time, all at once.
# usage: [PHASES="throughput bench"] bash benchmarks/gpu_check.sh BCCD_DIR OUT_DIR [EPOCHS] [BENCH_TIMEOUT_S]
set -u
DATA=$1 OUT=$2 EPOCHS=${3:-24} LIMIT=${4:-420} PHASES=${PHASES:-throughput bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"

throughput() {  # $1: name, then --set overrides
  local name=$1; shift
  $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m fcosdet.cli train fcos_r18_tricks_cpu \
    --data "$DATA" --run-dir "/tmp/gpu_$name" --overwrite --set train.epochs=2 --set train.eval_interval=2 \
    --set data.scale=[448,320] --set data.multiscale_short=null --set data.batch_size=16 --set data.workers=8 \
    --set model.fpn_channels=256 --set model.feat_channels=256 --set train.log_interval=5 "$@" 2>&1 \
    | grep -E "training|AP |^ *[0-9.]+ +[0-9.]+|Error|error" | tee -a "$OUT/gpu.txt"
  $PY -c "import json,sys; r=[json.loads(l) for l in open('/tmp/gpu_$name/log.jsonl') if 'images_per_s' in l]; \
print('$name', 'images/s (epoch 2):', round(r[-1]['images_per_s'], 1))" | tee -a "$OUT/gpu.txt"
}
if [[ $PHASES == *throughput* ]]; then
  $PY benchmarks/assign_batch.py --device "${DEVICE:-cuda}" --data "$DATA" | tee -a "$OUT/gpu.txt"
  throughput fp32
  throughput bf16 --set train.amp=bf16
fi
[[ $PHASES == *bench* ]] || exit 0

bench() {  # $1: name, then benchmark arguments
  local name=$1; shift
  timeout "$LIMIT" $PY benchmarks/bccd_vs_torchvision.py --epochs "$EPOCHS" --width 256 --data "$DATA" \
    --device "${DEVICE:-cuda}" --workers 2 --out "/tmp/bench_$name.json" "$@" > "/tmp/bench_$name.log" 2>&1
}
export OMP_NUM_THREADS=2
bench base --preset fcos_r18_cpu --skip-torchvision &
bench tricks --preset fcos_r18_tricks_cpu --skip-torchvision &
bench torchvision --skip-fcosdet &
bench base_center --preset fcos_r18_cpu --skip-torchvision --set model.center_sampling=true &
bench base_normbbox --preset fcos_r18_cpu --skip-torchvision --set model.norm_on_bbox=true &
bench base_centeronreg --preset fcos_r18_cpu --skip-torchvision --set model.centerness_on_reg=true &
bench base_giou --preset fcos_r18_cpu --skip-torchvision --set model.bbox_loss=giou &
wait
for f in /tmp/bench_*.json; do cat "$f"; echo; done > "$OUT/bench.jsonl"
for f in /tmp/bench_*.log; do echo "== $f"; grep -vE "^\s*$|it/s\]" "$f" | tail -25; done > "$OUT/bench_logs.txt"
cat "$OUT/bench.jsonl"
