#!/usr/bin/env bash
# The GPU check of the student's engine path (issue 14), at most ~9 minutes on one GPU node:
# vLLM serves CHECKPOINT through lion_nb's orchestration and answers 500 prompts; transformers answers 64 of them.
# Usage: bench/gpu_vllm_check.sh [CHECKPOINT]   (default: the embedded student, SmolLM2-135M-Instruct)
# Environment: PYTHON (default .venv/bin/python), VLLM (the vllm executable, default: vllm on PATH), OUT (records).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-.venv/bin/python}
VLLM=${VLLM:-vllm}
CKPT=${1:-$($PY -c 'from lion_nb.models import student_checkpoint; print(student_checkpoint())')}
command -v "$VLLM" >/dev/null || { echo "vLLM is not installed: pip install 'lion_nb[gpu]' (or VLLM=/path/to/bin/vllm)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 540 "$PY" bench/gpu_vllm_check.py --checkpoint "$CKPT" --prompts 500 --max-tokens 256 --hf-prompts 64 \
  --vllm "$VLLM" --out "${OUT:-/tmp/gpu_vllm_check}"
