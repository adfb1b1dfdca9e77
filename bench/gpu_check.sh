#!/usr/bin/env bash
# The GPU check of issue 14 (training half): FSDP2 + nccl + bf16 training of SmolLM2-135M, a checkpoint, a resume,
# the streamed export; tokens/s, memory, MFU. At most ~10 minutes on one H200. Run from the repository root:
#     bash bench/gpu_check.sh            (on the device machine: $OUT receives the log and the JSON line)
# That machine's python3 holds torch, transformers, safetensors and peft but not pydantic, which lion_nb needs:
# carry wheels for its Python (3.12) in .device_wheels/ (list it in .git/info/exclude), made beforehand with
#     pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .device_wheels pydantic
# and name .device_wheels in the run's carry.
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-python3}
if ! "$PY" -c 'import pydantic' 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links .device_wheels pydantic
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"      # the torchrun workers import lion_nb from here
LOGS="${OUT:-/tmp/gpu_check_out}"; mkdir -p "$LOGS"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no GPU visible"; print(torch.__version__, torch.cuda.get_device_name(0))'
timeout 540 "$PY" bench/gpu_check.py --out /tmp/gpu_check_work "$@" 2>&1 | tee "$LOGS/gpu_check.log"
tail -1 "$LOGS/gpu_check.log" > "$LOGS/gpu_check.json"
# vLLM serving of the export (issue 14, student generation) goes here, as its own script reading
# /tmp/gpu_check_work/run/model: see vllm_check() in bench/gpu_check.py.
