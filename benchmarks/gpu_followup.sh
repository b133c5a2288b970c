#!/usr/bin/env bash
# The GPU questions that session 3's run of gpu_check.sh left open, as one prepared run
# (about 5 minutes on an H100/H200), under one deadline (GPU_CHECK_BUDGET, default 420 s):
#
#   1. Exact resume on CUDA: with --deterministic, a run stopped by SIGTERM mid-epoch and
#      resumed must end with the unbroken run's weights, bit for bit (the CPU tests prove it
#      there; CUDA's RNG and kernels are the untested part).
#   2. torch.compile through the frozen -> fine-tuning switch (EfficientNet-Lite0 with its
#      ImageNet weights, so the frozen phase runs): that it finishes, and what each epoch costs.
#   3. The slow first fine-tuning epoch (25-27 s against 7.3 s later on, Lite0 at 224): the
#      same 3-epoch run with --deterministic shows whether later deterministic epochs are as
#      slow as the first, i.e. whether the first epoch's extra time is the autotuner's.
#
# Carry the wheels and data as gpu_check.sh's header says (carry [".whl", ".gpudata"]), then
#   bash benchmarks/gpu_followup.sh
# Dry run on a CPU (tiny sizes, same steps): GPU_CHECK_QUICK=1 bash benchmarks/gpu_followup.sh
OUT=${OUT:-/tmp/gpu_followup}
BUDGET=${GPU_CHECK_BUDGET:-420}
source "$(dirname "$0")/gpu_common.sh"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    N=256 BATCH=32 DEVICE=cpu RESIZE=1 SMALLER=1 SMALL=(--set data.limit_train=600 --set data.limit_test=300)
else
    N=20000 BATCH=256 DEVICE=cuda RESIZE=7 SMALLER=4 SMALL=()
fi

# 1. Exact resume on CUDA, deterministic: the seed model at 128x128 from random init. The
#    stopped run saves its position at every step (so its last.pt shows the loop is running);
#    the resumed one inherits that, which slows it but changes no number.
$PY -c "from synthetic_cifar import make_cifar100_archive as m; \
m('$WORK/c100.tar.gz', n_train=$N, n_test=1000)" || exit 1
TRAIN=(-m cifar100 train --preset seed --weights none --data "$WORK/c100.tar.gz"
       --cache-dir "$WORK/cache" --batch-size "$BATCH" --device "$DEVICE" --no-progress
       --deterministic --epochs 2 --set train.freeze_epochs=0 --set model.resize="$SMALLER")
step unbroken 120 $PY "${TRAIN[@]}" --out "$WORK/unbroken"
stop_mid_epoch stopped "$WORK/stopped" $PY "${TRAIN[@]}"
step resumed 120 $PY -m cifar100 train --resume "$WORK/stopped" --cache-dir "$WORK/cache" \
    --no-progress
step same_weights 60 $PY -c "
import sys, torch
a = torch.load('$WORK/unbroken/last.pt', map_location='cpu', weights_only=True)['model']
b = torch.load('$WORK/stopped/last.pt', map_location='cpu', weights_only=True)['model']
diff = [k for k in a if not torch.equal(a[k], b[k])]
print(f'{len(a) - len(diff)} of {len(a)} tensors equal bit for bit; differing: {diff[:5]}')
sys.exit(1 if diff else 0)"

if [ -f "$REAL" ]; then
    LITE=(-m cifar100 train --preset fast --dataset folder --data "$REAL" "${SMALL[@]}"
          --backbone efficientnet_lite0 --weights imagenet --set model.resize="$RESIZE"
          --epochs 3 --device "$DEVICE" --no-progress --cache-dir "$WORK/cache")
    # 3. Per-epoch times without the autotuner (and with deterministic kernels).
    step lite0_deterministic 150 $PY "${LITE[@]}" --deterministic --out "$WORK/det"
    # 2. Compiled, through the frozen -> fine-tuning switch.
    step lite0_compiled 240 $PY "${LITE[@]}" --set train.compile=true --out "$WORK/compiled"
fi
log "done"
