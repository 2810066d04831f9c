#!/usr/bin/env bash
# CUDA training benchmark (one GPU): lexforge padded vs packed vs TRL SFTTrainer's best settings in bf16 with
# flash-attn + Liger, then tokens/s/GPU and MFU of a 1-8B Llama-shaped model made from a config (no hub download)
# next to the planner's MFU assumption. Results: bench-results/gpu.json (+ the printed summary).
#
#   bench/gpu.sh                         # 1B shape, LoRA and full
#   bench/gpu.sh --mfu-model 8b --methods lora
#
# Needs the project venv (make install) with a CUDA build of torch. flash-attn and liger-kernel are GPU-only: they
# come from the GPU image or are installed here into that venv, and are deliberately not pinned in pyproject.toml
# (the CPU install cannot build them). Without them the run still works and reports what it used instead
# (SDPA, chunked cross-entropy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1
FLASH_ATTN_VERSION=${FLASH_ATTN_VERSION:-2.8.3.post2}
LIGER_VERSION=${LIGER_VERSION:-0.8.5}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; run this on a GPU node" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# --no-deps everywhere: never let pip replace the venv's CUDA torch
if ! "$PY" -c 'import flash_attn' 2>/dev/null; then
  echo "gpu.sh: installing flash-attn==$FLASH_ATTN_VERSION (prebuilt wheel or nvcc build, can take a while)"
  "$PY" -m pip install --no-deps einops \
    && MAX_JOBS=${MAX_JOBS:-8} "$PY" -m pip install --no-deps --no-build-isolation "flash-attn==$FLASH_ATTN_VERSION" \
    || echo "gpu.sh: flash-attn did not install; attention falls back to SDPA (recorded in the results)" >&2
fi
if ! "$PY" -c 'import liger_kernel' 2>/dev/null; then
  "$PY" -m pip install --no-deps "liger-kernel==$LIGER_VERSION" \
    || echo "gpu.sh: liger-kernel did not install; the loss falls back to the chunked one (recorded)" >&2
fi

mkdir -p bench-results
"$PY" bench/bench_gpu.py --json bench-results/gpu.json "$@"
