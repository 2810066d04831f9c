"""Benchmark: sanitize throughput (rows/s) vs plain ``json.loads`` over the same file, measured in the same run,
plus peak RSS of each (separate processes, so one does not inflate the other).

    .venv/bin/python bench/bench_data.py --size-mb 200
    .venv/bin/python bench/bench_data.py --size-mb 50 --tokenizer /path/to/model   # + token lengths

The input is generated: chat rows of varying length, ~1% malformed lines, ~2% duplicates, some role aliases
and stray whitespace. Prints a table and one JSON line (``BENCH {...}``).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILLER = ("The claimant relies on section 2 of the Limitation Act 1980; the defendant says time ran from the date "
          "of the breach. The documents in the bundle show the parties' correspondence. ")


def make_input(path: Path, size_mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    target, rows = size_mb * 1_000_000, 0
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < target:
            r = rng.random()
            if r < 0.01:
                f.write('{"messages": [{"role": "user", "content": "truncated\n')
            elif r < 0.03 and rows:
                f.write(json.dumps({"messages": [{"role": "user", "content": "Question 0?"},
                                                 {"role": "assistant", "content": "Answer 0."}]}) + "\n")
            else:
                user_role = "human" if r < 0.1 else "user"
                answer = f"Answer {rows}. " + (FILLER * rng.randint(1, 12)).strip() + ("  " if r < 0.15 else "")
                f.write(json.dumps({"messages": [
                    {"role": "system", "content": "You are a careful legal assistant."},
                    {"role": user_role, "content": f"Question {rows}?"},
                    {"role": "assistant", "content": answer}]}) + "\n")
            rows += 1
    return rows


def child(mode: str, src: str, tokenizer: str | None) -> None:
    t0 = time.perf_counter()
    if mode == "baseline":
        rows = 0
        with open(src, "rb") as f:
            for line in f:
                try:
                    json.loads(line)
                except ValueError:
                    pass
                rows += 1
        extra = {}
    else:
        from lexforge.data import SanitizeOptions, sanitize_file

        tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer)
            t0 = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix="lexforge-bench-")) / "out.jsonl"
        res = sanitize_file(src, out, SanitizeOptions(format="chat", max_seq_len=4096), tokenizer=tok)
        rows = res.report["total"]
        extra = {"kept": res.report["kept"], "dropped": res.report["dropped_total"], "repaired": res.report["repaired"]}
    secs = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "rows": rows, "seconds": secs, "rows_per_s": rows / secs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))


def run_child(mode: str, src: Path, tokenizer: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--input", str(src)] + (["--tokenizer", tokenizer] if tokenizer else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--tokenizer", help="model/tokenizer dir: also measure sanitize with token lengths")
    ap.add_argument("--input", help="use this JSONL instead of generating one")
    ap.add_argument("--child", choices=["baseline", "sanitize"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.input, a.tokenizer)
    with tempfile.TemporaryDirectory(prefix="lexforge-bench-data-") as tmp:
        src = Path(a.input) if a.input else Path(tmp) / "input.jsonl"
        if not a.input:
            make_input(src, a.size_mb)
        size_mb = src.stat().st_size / 1e6
        base = run_child("baseline", src)
        san = run_child("sanitize", src)
        results = {"input_mb": round(size_mb, 1), "baseline": base, "sanitize": san,
                   "sanitize_vs_json_loads": san["rows_per_s"] / base["rows_per_s"]}
        if a.tokenizer:
            tok = run_child("sanitize", src, a.tokenizer)
            results["sanitize_tokens"] = tok
            results["sanitize_tokens_vs_json_loads"] = tok["rows_per_s"] / base["rows_per_s"]
    print(f"input: {size_mb:.1f} MB, {base['rows']} rows")
    print(f"{'mode':<22}{'rows/s':>12}{'MB/s':>10}{'peak RSS MB':>14}{'ratio':>8}")
    for name, r in (("json.loads (baseline)", base), ("sanitize", san), ("sanitize + tokens", results.get("sanitize_tokens"))):
        if r:
            print(f"{name:<22}{r['rows_per_s']:>12.0f}{size_mb / r['seconds']:>10.1f}{r['peak_rss_mb']:>14.1f}"
                  f"{r['rows_per_s'] / base['rows_per_s']:>8.3f}")
    print("BENCH " + json.dumps(results))


if __name__ == "__main__":
    main()
