# Shared by the prepared GPU runs (gpu_check.sh, gpu_followup.sh); sourced, not run.
# The caller sets OUT (where the logs go) and BUDGET (seconds for the whole run). This sets
# up the carried wheels, PYTHONPATH, PY, WORK, LOGS and REAL (the carried JPEGs), prints
# the machine, and defines:
#   log TEXT                     a line in summary.txt, with the time left
#   step NAME TIMEOUT_S CMD...   run one check under the deadline, keep its log, never stop
#   stop_mid_epoch NAME RUN CMD...  start a training CMD that saves its position at every
#                                step, SIGTERM it once RUN/last.pt exists, report its exit
set -uo pipefail
mkdir -p "$OUT"
DEADLINE=$((SECONDS + BUDGET))
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
LOGS=$(mktemp -d)
REAL=.gpudata/cifar10-jpeg.tar.gz
trap 'rm -rf "$WORK" "$LOGS"' EXIT

log() { echo "== $* ($(date +%T), $((DEADLINE - SECONDS)) s left)" | tee -a "$OUT/summary.txt"; }

step() {
    local name=$1 limit=$2 left=$((DEADLINE - SECONDS - 5))
    shift 2
    if [ "$left" -lt 30 ]; then
        echo "-- $name: skipped, out of time" | tee -a "$OUT/summary.txt"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    log "$name (limit ${limit} s)"
    timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$LOGS/$name.log"
    echo "-- $name: exit $rc" | tee -a "$OUT/summary.txt"
    tar czf "$OUT/logs.tar.gz" -C "$LOGS" .  # the device tool brings back 8 files at most
}

stop_mid_epoch() {
    local name=$1 run=$2 pid
    shift 2
    log "$name"
    "$@" --out "$run" --set train.checkpoint_minutes=0.0001 >"$LOGS/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do [ -f "$run/last.pt" ] && break; sleep 0.2; done
    kill -TERM "$pid"
    wait "$pid"
    echo "-- $name: exit $? ($(tail -n 1 "$LOGS/$name.log"))" | tee -a "$OUT/summary.txt"
}

log "machine"
{ nvidia-smi -L 2>/dev/null; $PY -c "import torch, sys; print(sys.version.split()[0], \
torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; \
  } | tee -a "$OUT/summary.txt"
