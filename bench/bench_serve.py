"""Serving benchmark, all baselines measured in the same run on the same model and prompts:

1. lexforge (Ray Serve + vLLM AsyncLLM, auth + metrics + adapter table)  vs  bare vLLM OpenAI server
   (``python -m vllm.entrypoints.openai.api_server``, same engine flags incl. LoRA enabled):
   throughput (completion tokens/s, requests/s) and latency (p50/p95 end-to-end, p50 time to first token).
   Both servers run at the same time and the measurement rounds alternate between them (ABBA), so load from
   other processes on a shared machine affects both sides alike.
2. vLLM (the bare server's measured tokens/s)  vs  transformers ``generate`` (in-process, greedy, batches of
   ``--concurrency`` prompts): tokens/s ratio.

Both servers get identical streaming chat requests (greedy, fixed max_tokens) from ``--concurrency`` client
threads. Runs on CPU in a few minutes with the tiny model (default) or SmolLM2 (``--model smollm2``).

    .venv/bin/python bench/bench_serve.py [--model tiny|smollm2|PATH] [--requests 16] [--rounds 4] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lexforge.procs import stop_group, wait_http  # noqa: E402
from lexforge.testing import free_port  # noqa: E402

KEY = "bench-key-" + "5d0c3e8f7a9b1c2d"
QUESTIONS = [
    "What does section 1 of the Consumer Rights Act 2015 cover?",
    "Summarise the duty of care owed by an occupier.",
    "When is a contract term unfair under UK law?",
    "Explain the limitation period for a breach of contract claim.",
    "What is the role of the Information Commissioner?",
    "Can a landlord withhold a tenancy deposit?",
    "What must an employer include in a written statement of particulars?",
    "Explain the difference between a lease and a licence.",
]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (case {i})"}] for i in range(n)]


def resolve_model(arg: str, work: Path) -> Path:
    if arg == "tiny":
        from lexforge.testing import build_tiny_llama

        # vLLM's CPU attention needs head_dim >= 32.
        return build_tiny_llama(work / "tiny-llama-hd32", hidden_size=64, num_heads=2, num_kv_heads=1,
                                num_layers=4)
    if arg == "smollm2":
        from lexforge.models import bootstrap_smollm2

        return bootstrap_smollm2()
    return Path(arg).resolve()


def load(url: str, model: str, msgs: list[list[dict]], max_tokens: int, concurrency: int) -> dict:
    """Streaming chat requests from ``concurrency`` threads; per-request latency, TTFT and tokens."""
    todo = list(enumerate(msgs))
    lock = threading.Lock()
    rows: list[dict] = []
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    _, m = todo.pop(0)
                body = {"model": model, "messages": m, "max_tokens": max_tokens, "temperature": 0.0,
                        "stream": True, "stream_options": {"include_usage": True}}
                t0 = time.perf_counter()
                ttft, tokens = None, 0
                try:
                    with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            r.read()
                            raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                        for line in r.iter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            if ttft is None and any((ch.get("delta") or {}).get("content") for ch in chunk["choices"]):
                                ttft = time.perf_counter() - t0
                            if chunk.get("usage"):
                                tokens = chunk["usage"]["completion_tokens"]
                except Exception as e:
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    rows.append({"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens})

    # warm-up (first request pays lazy init on both servers)
    with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as c:
        c.post(url + "/v1/chat/completions", json={"model": model, "messages": msgs[0], "max_tokens": 4}).raise_for_status()
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(r["latency"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {
        "rows": rows, "requests": len(rows), "errors": len(errors), "error_samples": errors[:3], "wall_s": wall,
        "completion_tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": len(rows) / wall,
        "p50_latency_s": statistics.median(lat) if lat else None,
        "p95_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "p50_ttft_s": statistics.median(r["ttft"] for r in rows) if rows else None,
    }


@contextlib.contextmanager
def lexforge_server(model: Path, args):
    """lexforge's Ray Serve app on a local Ray; yields (url, model name, startup seconds)."""
    import ray
    from ray import serve

    from lexforge.config import spec_from_dict
    from lexforge.serve import auth
    from lexforge.serve.app import build_app
    from lexforge.serve.settings import ChampionSourceConfig, settings_from_spec

    spec = spec_from_dict({"name": "bench", "data": {"train": "-"},
                           "serve": {"max_model_len": args.max_model_len, "max_loras": 2, "max_lora_rank": 16}})
    s = settings_from_spec(spec, base_model=str(model), champion=ChampionSourceConfig(kind="none"),
                           api_key_digests=[auth.digest(KEY)], dtype=args.dtype, accelerator="cpu",
                           max_num_seqs=args.concurrency * 2, num_cpus=1)
    port = free_port()
    t0 = time.perf_counter()
    from lexforge import ray_auth

    with ray_auth.ray_init_env("local"):  # token auth and loopback, like lexforge's own clusters
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(s), name="lexforge", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}", s.base_name, time.perf_counter() - t0
    finally:
        serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def bare_vllm_server(model: Path, args, work: Path):
    """``python -m vllm.entrypoints.openai.api_server`` with the same engine flags; yields (url, name, startup s)."""
    port = free_port()
    log = work / "vllm_server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "base", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(args.max_model_len), "--dtype", args.dtype, "--enforce-eager",
           "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16", "--max-num-seqs", str(args.concurrency * 2),
           "--api-key", KEY, "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=900, proc=proc, log_path=log)
        yield f"http://127.0.0.1:{port}", "base", time.perf_counter() - t0
    finally:
        stop_group(proc.pid)


def merge(rounds: list[dict]) -> dict:
    """Pool interleaved rounds: throughput = total tokens / total wall, latency percentiles over all requests."""
    rows = [r for x in rounds for r in x.pop("rows")]
    wall = sum(x["wall_s"] for x in rounds)
    lat = sorted(r["latency"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    return {
        "rounds": len(rounds), "requests": len(rows), "errors": sum(x["errors"] for x in rounds),
        "error_samples": [e for x in rounds for e in x["error_samples"]][:3], "wall_s": wall,
        "completion_tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0,
        "requests_per_s": len(rows) / wall if wall else 0.0,
        "p50_latency_s": statistics.median(lat) if lat else None,
        "p95_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "p50_ttft_s": statistics.median(r["ttft"] for r in rows) if rows else None,
        "per_round_tokens_per_s": [round(x["tokens_per_s"], 2) for x in rounds],
    }


def bench_servers(model: Path, args, msgs, work: Path) -> tuple[dict, dict]:
    """Both servers up at once; rounds alternate between them (ABBA order) so background load drifts hit both."""
    with bare_vllm_server(model, args, work) as (burl, bname, bstart), \
            lexforge_server(model, args) as (lurl, lname, lstart):
        out: dict[str, list] = {"bare": [], "lexforge": []}
        targets = {"bare": (burl, bname), "lexforge": (lurl, lname)}
        for i in range(args.rounds):
            order = ["bare", "lexforge"] if i % 2 == 0 else ["lexforge", "bare"]
            for k in order:
                print(f"  round {i + 1}/{args.rounds}: {k}", flush=True)
                out[k].append(load(*targets[k], msgs, args.max_tokens, args.concurrency))
    bare, lx = merge(out["bare"]), merge(out["lexforge"])
    bare["startup_s"], lx["startup_s"] = bstart, lstart
    return bare, lx


def bench_transformers(model: Path, args, msgs) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype, torch.float32)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
    texts = [tok.apply_chat_template(x, tokenize=False, add_generation_prompt=True) for x in msgs]
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), args.concurrency):
            batch = tok(texts[i:i + args.concurrency], return_tensors="pt", padding=True, add_special_tokens=False)
            out = m.generate(**batch, max_new_tokens=args.max_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            eos = tok.eos_token_id
            for row in new:  # count tokens up to and including EOS, like the servers do
                ids = row.tolist()
                tokens += ids.index(eos) + 1 if eos in ids else len(ids)
    wall = time.perf_counter() - start
    return {"requests": len(texts), "wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | PATH to an HF model dir")
    ap.add_argument("--requests", type=int, default=32, help="requests per round per server")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved measurement rounds per server")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 (CPU)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model = resolve_model(args.model, work)
    msgs = prompts(args.requests)
    print(f"model={model} requests={args.requests} concurrency={args.concurrency} max_tokens={args.max_tokens}",
          flush=True)

    results: dict = {"config": {**vars(args), "model_path": str(model), "out": str(args.out) if args.out else None}}
    print(f"[1/2] bare vLLM server and lexforge (Ray Serve + vLLM), {args.rounds} interleaved rounds ...", flush=True)
    results["bare_vllm"], results["lexforge"] = bench_servers(model, args, msgs, work)
    if not args.skip_transformers:
        print("[2/2] transformers generate ...", flush=True)
        results["transformers"] = bench_transformers(model, args, msgs)
    lx, bare, hf = results["lexforge"], results["bare_vllm"], results.get("transformers")
    results["ratios"] = {
        "lexforge_vs_bare_vllm_tokens_per_s": ratio(lx["tokens_per_s"], bare["tokens_per_s"]),
        "lexforge_vs_bare_vllm_p50_latency": ratio(lx["p50_latency_s"], bare["p50_latency_s"]),
        "lexforge_vs_bare_vllm_p95_latency": ratio(lx["p95_latency_s"], bare["p95_latency_s"]),
        "lexforge_vs_bare_vllm_p50_ttft": ratio(lx["p50_ttft_s"], bare["p50_ttft_s"]),
        "vllm_vs_transformers_tokens_per_s": ratio(bare["tokens_per_s"], hf["tokens_per_s"]) if hf else None,
    }
    print()
    print(f"{'':28}{'tokens/s':>10}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'ttft50':>8}{'errors':>7}")
    for name, r in (("bare vLLM server", bare), ("lexforge Ray Serve + vLLM", lx)):
        print(f"{name:28}{r['tokens_per_s']:10.1f}{r['requests_per_s']:8.2f}{r['p50_latency_s']:8.3f}"
              f"{r['p95_latency_s']:8.3f}{r['p50_ttft_s']:8.3f}{r['errors']:7d}")
    if hf:
        print(f"{'transformers generate':28}{hf['tokens_per_s']:10.1f}")
    print()
    for k, v in results["ratios"].items():
        print(f"{k:42} {v}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if lx["errors"] or bare["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
