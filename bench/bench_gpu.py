"""CUDA training benchmark (run it through bench/gpu.sh, which installs the GPU-only kernels first).

1. throughput: the CPU benchmark's comparison on one GPU in bf16 (bench_train.bench_throughput with
   device=cuda): lexforge padded vs packed + token budget vs TRL SFTTrainer padded / padding-free / packed, with
   flash-attn (varlen for packed rows) and Liger's fused linear cross-entropy when installed.
2. mfu: tokens/s/GPU of lexforge run_training (1 worker, LoRA or full SFT, packed, bf16) on a 1-8B Llama-shaped
   model initialised randomly from a config (no hub download; SmolLM2's tokenizer, so its 49152 vocabulary),
   on long synthetic conversations built from the shipped legal Q&A; MFU counted the way the planner counts it
   (k x parameters x tokens / (GPUs x dense bf16 peak), lexforge.plan.training) next to the planner's assumed MFU.

``--smoke`` runs part 2 on CPU with a tiny shape and two steps: it checks this script, not the numbers.
Usage: bench/gpu.sh [--mfu-model 1b|3b|8b] [--methods lora,full] [--skip throughput] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import bench_throughput, build_smollm2_shaped, make_spec  # noqa: E402

#: Llama 3.x layer shapes (the vocabulary is SmolLM2's, since no Llama tokenizer can be downloaded)
SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
           "num_key_value_heads": 8},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "smoke": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2},
}


def build_llama_from_config(out: Path, shape: str, tokenizer_dir: Path, device: str) -> tuple[Path, int]:
    """A random Llama of ``shape`` saved in bf16 (fp32 for the CPU smoke run); returns (dir, parameter count)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, rope_theta=500000.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=shape in ("1b", "3b", "smoke"), **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    if not (out / "config.json").is_file():
        model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    del model
    return out, n


def long_conversations(clean_rows: str, path: Path, n: int, min_pairs: int, max_pairs: int, seed: int = 0) -> Path:
    """Multi-turn chats of ``min_pairs..max_pairs`` shipped Q&A pairs each (legal 'golden pairs' run ~4k tokens)."""
    from lexforge.train.data import read_clean_rows

    rows = read_clean_rows(clean_rows)
    pairs = [[m for m in r["messages"] if m["role"] != "system"] for r in rows]
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            msgs = [m for p in rng.sample(pairs, rng.randint(min_pairs, max_pairs)) for m in p]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def peak_flops(device: str, threads: int) -> tuple[float, str]:
    """Dense bf16 peak of this GPU from the planner's catalog (or the planner's CPU assumption for --smoke)."""
    from lexforge.plan.catalog import gpu_catalog
    from lexforge.plan.training import CPU_GFLOPS_PER_CORE

    if device != "cuda":
        return CPU_GFLOPS_PER_CORE * 1e9 * threads, f"CPU {threads} cores x {CPU_GFLOPS_PER_CORE:g} GFLOPS (planner)"
    import torch

    name = torch.cuda.get_device_name()
    for key, gpu in gpu_catalog().items():
        if key.lower() in name.lower():
            return gpu.bf16_tflops * 1e12, f"{key} {gpu.bf16_tflops:g} dense bf16 TFLOPS (planner catalog)"
    raise SystemExit(f"{name} is not in the planner's GPU catalog (lexforge/plan/gpus.yaml): add it to get MFU")


def bench_mfu(work: Path, shape: str, methods: list[str], steps: int, device: str, threads: int,
              compile_: bool) -> dict:
    from lexforge.plan.training import DEFAULT_MFU, _training_flops_factor
    from lexforge.train import run_training
    from lexforge.train.model import resolve_attn_implementation
    from lexforge.train.loss import resolve_cross_entropy

    smoke = shape == "smoke"
    tok_dir = build_smollm2_shaped(work / "smollm2-shaped")
    model, params = build_llama_from_config(work / f"llama-{shape}", shape, tok_dir, device)
    from lexforge.train.data import resolve_train_data

    clean = resolve_train_data(make_spec("mfu-data", tok_dir, work / "store-data")).train_path  # sanitized rows
    data = long_conversations(clean, work / "long.jsonl", 64 if smoke else 512, *((1, 3) if smoke else (8, 30)))
    peak, peak_src = peak_flops(device, threads)
    out = {"shape": shape, "params": params, "peak_flops": peak, "peak": peak_src, "planner_mfu": DEFAULT_MFU}
    for method in methods:
        hp = {"hyperparams.max_steps": steps, "hyperparams.per_device_batch_size": 8,
              "hyperparams.gradient_accumulation_steps": 1, "hyperparams.packing": True,
              "hyperparams.max_tokens_per_batch": 2048 if smoke else 32768, "hyperparams.torch_compile": compile_,
              "hyperparams.learning_rate": 1e-4 if method == "lora" else 1e-5, "data.max_seq_len": 512 if smoke
              else 8192, "data.train": str(data), "resources.cpus_per_worker": threads, "lora.r": 16,
              "lora.alpha": 32}
        if device == "cuda":
            hp.update({"resources.gpus_per_worker": 1, "hyperparams.precision": "bf16"})
        spec = make_spec(f"mfu-{shape}-{method}", model, work / f"store-mfu-{method}", method=method, **hp)
        r = run_training(spec)
        tps = r.details["tokens_total"] / r.details["train_seconds"]
        k, why = _training_flops_factor(method, "sft", False)
        out[method] = {"tokens_per_s_per_gpu": tps, "flops_per_token": k * params, "flops_factor": why,
                       "mfu": k * params * tps / peak, "steps": r.steps, "train_seconds": r.details["train_seconds"],
                       "attn_implementation": resolve_attn_implementation(spec, device),
                       "cross_entropy": resolve_cross_entropy(spec, device), "torch_compile": compile_}
    return out


def environment() -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for pkg in ("transformers", "trl", "peft", "flash-attn", "liger-kernel"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    return env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--throughput-steps", type=int, default=30)
    ap.add_argument("--mfu-model", choices=["1b", "3b", "8b"], default="1b")
    ap.add_argument("--methods", default="lora,full", help="comma list of lora | full for the MFU runs")
    ap.add_argument("--mfu-steps", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="hyperparams.torch_compile=true in the MFU runs")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--skip", action="append", default=[], help="throughput | mfu")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shape, 2 steps: checks the script only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import ray
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    work = Path(tempfile.mkdtemp(prefix="lexforge-bench-gpu-"))
    os.environ.setdefault("LEXFORGE_HOME", str(work / "home"))
    from lexforge import ray_auth

    with ray_auth.ray_init_env("local"):  # token auth and loopback, like lexforge's own clusters
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, configure_logging=False)
    results: dict = {"environment": environment()}
    if "throughput" not in args.skip and not args.smoke:
        t = results["throughput"] = bench_throughput(work, args.throughput_steps, args.threads, device="cuda")
        for k in ("lexforge_padded", "lexforge_packed", "trl_padded", "trl_padding_free", "trl_packing"):
            print(f"{k:18s} {t[k]['tokens_per_s']:9.0f} tokens/s  padding share {t[k]['padding_share']:.1%}")
        print(f"lexforge packed / unpacked: {t['packed_vs_unpacked']:.2f}; packed / best TRL ({t['trl_best']}): "
              f"{t['packed_vs_trl_best']:.2f}")
    if "mfu" not in args.skip:
        shape = "smoke" if args.smoke else args.mfu_model
        m = results["mfu"] = bench_mfu(work, shape, args.methods.split(","), 2 if args.smoke else args.mfu_steps,
                                       device, args.threads, args.compile)
        for method in args.methods.split(","):
            r = m[method]
            print(f"{shape} {method}: {r['tokens_per_s_per_gpu']:.0f} tokens/s/GPU, MFU {r['mfu']:.1%} "
                  f"(planner assumes {m['planner_mfu']:.0%}; {r['attn_implementation']}, {r['cross_entropy']})")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
