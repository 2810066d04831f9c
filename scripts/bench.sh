#!/usr/bin/env bash
# `make bench`: every benchmark in bench/, each printing ratios against a baseline measured in the same run.
# CPU-sized defaults (minutes in all); pass bigger sizes to the scripts directly on real hardware.
# On a CUDA node, bench/gpu.sh runs the training throughput comparison in bf16 and measures MFU.
# Results also go to bench-results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1
PY=.venv/bin/python
OUT=bench-results
mkdir -p "$OUT"

echo "== data: sanitize vs json.loads (${BENCH_DATA_MB:-100} MB generated) =="
$PY bench/bench_data.py --size-mb "${BENCH_DATA_MB:-100}" | tee "$OUT/data.txt"

echo "== train: tokens/s lexforge packed vs padded vs bare TRL, async vs sync checkpoints, SIGKILL/SIGTERM recovery =="
$PY bench/bench_train.py --json "$OUT/train.json"

echo "== grpo: lexforge GRPO vs TRL GRPOTrainer (seconds/step, reward after N steps, run-to-run noise) =="
$PY bench/bench_grpo.py --json "$OUT/grpo.json"

echo "== serve: lexforge (Ray Serve + vLLM) vs bare vLLM server, vLLM vs transformers =="
$PY bench/bench_serve.py --model tiny --requests 12 --rounds 4 --concurrency 4 --max-tokens 32 --out "$OUT/serve.json"

echo "== multi-node: seconds from node loss to the first resumed step, steps lost (no notice, notice, elastic) =="
$PY bench/bench_multinode.py --json "$OUT/multinode.json"
