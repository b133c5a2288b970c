#!/usr/bin/env bash
# The GPU checks of issue 4 as one prepared run (about 6-8 minutes on an H100), for a session
# that is lent a GPU machine. It prints what it measured and copies the logs to $OUT.
#
#   What it runs: `cifar100 bench` for ResNet50V2 at 224 (eager fp32 baseline vs the tuned
#   bf16 + channels-last + fused path, then torch.compile), and short real training runs on
#   the GPU through the CLI: the seed model at 224 on synthetic CIFAR-100-format data (bf16,
#   channels-last, device-resident batches and augmentation), the same with train.compile,
#   a SIGTERM mid-epoch then --resume (the CUDA RNG path of the exact-resume code), and a
#   search for host synchronisations inside the step loop (benchmarks/gpu_sync_check.py),
#   and the timm adapter's test against the real timm the GPU image has.
#   Not covered: NCCL/SyncBN with 2+ ranks (one GPU cannot hold two NCCL ranks).
#
# The GPU image has PyTorch but not platformdirs; carry it as a wheel. Here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl platformdirs
# then call the device tool with carry [".whl"] and the command
#   bash benchmarks/gpu_check.sh
# A dry run on a CPU (tiny sizes, same steps): GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    N=256 BATCH=32 SIZE=64 STEPS=3 EPOCHS=1 DEVICE=cpu RESIZE=1
else
    N=20000 BATCH=256 SIZE=224 STEPS=20 EPOCHS=2 DEVICE=cuda RESIZE=7
fi
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME TIMEOUT_S CMD...: run one check, keep its output, never stop the script
    local name=$1 limit=$2
    shift 2
    log "$name"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "-- $name: exit $rc" | tee -a "$OUT/summary.txt"
}

log "machine"
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch, sys; print(sys.version.split()[0], \
torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; \
  git rev-parse --short HEAD 2>/dev/null; } | tee -a "$OUT/summary.txt"

step bench 240 $PY -m cifar100 bench --backbone resnet50v2 --size "$SIZE" \
    --batch-size "$BATCH" --steps "$STEPS" --warmup 5 --device "$DEVICE"
step bench_compile 300 $PY -m cifar100 bench --backbone resnet50v2 --size "$SIZE" \
    --batch-size "$BATCH" --steps "$STEPS" --warmup 5 --device "$DEVICE" --compile

# The GPU image has timm, which cannot be installed on the CPU machines: its real test.
step timm_adapter 180 $PY -m pytest -q -p no:cacheprovider -rs tests/test_timm_adapter.py

# Any place in the step loop that makes the host wait for the GPU (CUDA sync debug mode).
step sync_check 300 $PY benchmarks/gpu_sync_check.py --preset best --steps 40 \
    --resize "$RESIZE" --batch-size "$BATCH"

$PY -c "from synthetic_cifar import make_cifar100_archive as m; \
m('$WORK/c100.tar.gz', n_train=$N, n_test=2000)" || exit 1
# The seed model (7x upsampling to 224) from random init: no weights can be fetched there.
TRAIN=(-m cifar100 train --preset seed --weights none --data "$WORK/c100.tar.gz"
       --cache-dir "$WORK/cache" --batch-size "$BATCH" --device "$DEVICE" --no-progress
       --set train.freeze_epochs=0 --set data.val_fraction=0.1)
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && TRAIN+=(--set model.resize=2)
step train_eager 300 $PY "${TRAIN[@]}" --epochs "$EPOCHS" --out "$WORK/eager"
step train_compile 400 $PY "${TRAIN[@]}" --epochs 1 --out "$WORK/compiled" \
    --set train.compile=true
cat "$WORK"/eager/metrics.jsonl "$WORK"/compiled/metrics.jsonl >"$OUT/metrics.jsonl" 2>/dev/null

log "sigterm_resume"
$PY "${TRAIN[@]}" --epochs 1 --out "$WORK/stopped" --set train.checkpoint_minutes=0.0001 \
    >"$OUT/sigterm.log" 2>&1 &
pid=$!
for _ in $(seq 600); do [ -f "$WORK/stopped/last.pt" ] && break; sleep 0.2; done
kill -TERM "$pid"
wait "$pid"
echo "-- stopped: exit $? ($(tail -n 1 "$OUT/sigterm.log"))" | tee -a "$OUT/summary.txt"
step resume 300 $PY -m cifar100 train --resume "$WORK/stopped" --cache-dir "$WORK/cache" \
    --no-progress
rm -rf "$WORK"
log "done"
