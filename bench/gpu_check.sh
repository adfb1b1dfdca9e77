#!/usr/bin/env bash
# The GPU check of issue 26 (bench/gpu_check.py says what it runs), on the lent GPU machine as it is: its own
# python3 (torch with CUDA, transformers, accelerate, peft, safetensors, numpy; bench/gpu_image_packages.txt),
# plus the wheels listed in bench/gpu_wheels.txt for what it lacks (pydantic, fastcore, openai and their needs),
# carried in .whl/ (made here beforehand by `bash bench/gpu_wheels.sh`). At most about 7 minutes on one H100.
#     bash bench/gpu_check.sh                # on the device machine: $OUT receives the log and the JSON line
#     bash bench/gpu_check.sh --cpu-smoke    # the same path on 2 CPU processes (gloo), tiny sizes
# Environment: PYTHON (default python3), GPU_WHEELS (default .whl), GPU_SITE (the target folder the wheels are
# installed into, default /tmp/lion_gpu_site), GPU_CHECK_TIMEOUT_S (default 420), OUT (where the log goes).
# Exit codes: 0 passed; 1 a step failed; 3 CPU-only torch; 4 wheels missing; 5 no GPU visible; 124 timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
       OMP_WAIT_POLICY=PASSIVE TQDM_DISABLE=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.whl}
SITE=${GPU_SITE:-/tmp/lion_gpu_site}
LOGS=${OUT:-/tmp/gpu_check_out}
mkdir -p "$LOGS"
echo "gpu_check: $("$PY" -V 2>&1) at $(command -v "$PY"); $(nproc) cores"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 1. the carried wheels this Python lacks (or has older), into a target folder on PYTHONPATH: the torchrun
#    workers and the served engine inherit the variable, so they import the same packages
plan=$("$PY" bench/gpu_check.py --plan-wheels bench/gpu_wheels.txt "$WHEELS" 2>"$LOGS/wheels_missing.txt")
rc=$?
if [ $rc -ne 0 ]; then
    echo "wheels missing: $(sed 's/^MISSING //' "$LOGS/wheels_missing.txt" | tr '\n' ' ')(run bash bench/gpu_wheels.sh" \
         "here and name $WHEELS in the run's carry)"
    exit 4
fi
if [ -n "$plan" ]; then
    echo "gpu_check: installing $(echo "$plan" | wc -l) carried wheel(s) into $SITE"
    rm -rf "$SITE"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$SITE" $plan || { echo "wheels missing: pip could not install the carried wheels"; exit 4; }
    export PYTHONPATH="$SITE:$PWD" LION_GPU_SITE="$SITE"
else
    echo "gpu_check: every listed package is already here; no wheel installed"
    export PYTHONPATH="$PWD"
fi

# 2. the check itself, under a timeout that leaves the device call room to return its files
timeout --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-420}" "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$LOGS/gpu_check.log"
rc=${PIPESTATUS[0]}
tail -1 "$LOGS/gpu_check.log" | grep '^{' > "$LOGS/gpu_check.json" || true
[ $rc -eq 124 ] && echo "gpu_check: timed out after ${GPU_CHECK_TIMEOUT_S:-420} s"
echo "gpu_check: exit $rc"
exit $rc
