#!/usr/bin/env bash
# Runs the test suite in .venv. pytest's exit code 5 ("no tests collected") is a failure here:
# a test command that silently runs nothing must not pass.
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LEXFORGE_TEST=1 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# the slowest tests are listed at the end of every run (CI logs show where the budget goes)
case " $* " in *" --durations"*) dur=() ;; *) dur=(--durations=25) ;; esac
.venv/bin/python -m pytest "${dur[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treating as failure" >&2
  exit 1
fi
exit "$rc"
