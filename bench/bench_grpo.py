"""GRPO benchmark: lexforge (the real Trainer: run_training, 1 Ray Train worker) vs TRL's GRPOTrainer in the same
run, on the same model, prompts (lexforge/samples/data/legal_grpo.jsonl), reward, resources and settings
(num_generations, max_completion_length, temperature, LoRA, lr, seed, steps).

Per system and repeat: seconds per optimizer step (the sum of step times, start-up excluded) and the mean reward
of the trained policy after N steps, measured the same way for both (HF sampling, a fixed seed, the same eval
prompts and reward). Repeats use seeds seed, seed+1, ... (the same for both systems), so the std over repeats is
the run-to-run noise the reward comparison is judged against. Ratios: lexforge / TRL seconds per step (target
<= 1) and reward difference (target >= -noise).

Usage: .venv/bin/python bench/bench_grpo.py [--steps 4] [--repeats 3] [--rollout hf|vllm] [--model smollm2|tiny]
       [--threads 2] [--json out.json]
TRL generates with transformers on CPU (use_vllm=False); --rollout vllm switches lexforge only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "lexforge" / "samples" / "data" / "legal_grpo.jsonl"


def settings(args) -> dict:
    return {"steps": args.steps, "prompts_per_step": args.prompts_per_step, "num_generations": args.generations,
            "max_completion_length": args.max_completion_length, "learning_rate": args.lr, "lora_r": 8,
            "lora_alpha": 16, "temperature": 1.0, "reward": args.reward, "loss_type": "dapo", "beta": 0.0,
            "threads": args.threads, "rollout": args.rollout}


def lexforge_run(model: str, work: Path, s: dict, seed: int) -> dict:
    from lexforge.config import spec_from_dict
    from lexforge.train import run_training

    name = f"bench-grpo-s{seed}"
    spec = spec_from_dict({
        "name": name, "model": {"base": model, "dtype": "float32"}, "method": "lora", "stage": "grpo",
        "strategy": "ddp", "lora": {"r": s["lora_r"], "alpha": s["lora_alpha"], "dropout": 0.0},
        "data": {"train": str(DATA), "max_seq_len": 256, "holdout_fraction": 0.0, "near_dedupe": False},
        "hyperparams": {"max_steps": s["steps"], "per_device_batch_size": s["prompts_per_step"],
                        "learning_rate": s["learning_rate"], "lr_scheduler": "constant", "warmup_ratio": 0.0,
                        "seed": seed, "precision": "fp32"},
        "grpo": {"num_generations": s["num_generations"], "max_completion_length": s["max_completion_length"],
                 "temperature": s["temperature"], "beta": s["beta"], "loss_type": s["loss_type"],
                 "rollout_engine": s["rollout"], "rewards": [{"name": s["reward"]}]},
        "resources": {"num_workers": 1, "cpus_per_worker": s["threads"]},
        "checkpoint": {"every_n_steps": 1_000_000}, "storage": {"root": str(work / f"store-{name}")}})
    r = run_training(spec)
    return {"seconds_per_step": r.details["train_seconds"] / r.steps, "steps": r.steps, "adapter": str(r.output_dir)}


def trl_run(model: str, work: Path, s: dict, seed: int, reward_fn):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from hf_timing import step_timer  # bench/ sibling (benches run as scripts)

    def trl_reward(prompts, completions, reference, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(reward_fn(t, ref, None)) for t, ref in zip(texts, reference)]

    torch.set_num_threads(s["threads"])
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "reference": r["reference"]}
                              for r in rows])
    g = s["num_generations"]
    cfg = GRPOConfig(output_dir=str(work / f"trl-s{seed}"), max_steps=s["steps"],
                     per_device_train_batch_size=s["prompts_per_step"] * g, gradient_accumulation_steps=1,
                     num_generations=g, max_completion_length=s["max_completion_length"],
                     temperature=s["temperature"], top_p=1.0, learning_rate=s["learning_rate"],
                     lr_scheduler_type="constant", warmup_steps=0, beta=s["beta"], loss_type=s["loss_type"],
                     num_iterations=1, max_grad_norm=1.0, weight_decay=0.0, use_vllm=False, use_cpu=True,
                     bf16=False, fp16=False, logging_steps=1, save_strategy="no", report_to=[],
                     dataloader_num_workers=0, disable_tqdm=True, seed=seed, gradient_checkpointing=False)
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    tok = AutoTokenizer.from_pretrained(model)
    timer = step_timer()
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                          reward_funcs=[trl_reward], args=cfg, train_dataset=data, processing_class=tok,
                          peft_config=lora, callbacks=[timer])
    trainer.train()
    return {"seconds_per_step": timer.total / s["steps"], "steps": s["steps"]}, trainer.model


def eval_reward(model, tok, prompts, refs, reward_fn, g: int, max_new: int, seed: int = 1234) -> float:
    """Mean reward of ``g`` sampled completions per prompt (temperature 1, fixed seed): the same for every
    policy measured."""
    import torch

    model.eval()
    scores = []
    with torch.no_grad():
        for p, ref in zip(prompts, refs):
            torch.manual_seed(seed)
            ids = torch.tensor([p] * g)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for c in out[:, len(p):].tolist():
                scores.append(float(reward_fn(tok.decode(c, skip_special_tokens=True), ref, None)))
    return sum(scores) / len(scores)


def eval_prompts(tok, n: int):
    from lexforge.train.data import tokenize_grpo

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][:n]
    ex = [tokenize_grpo(r, tok, 256) for r in rows]
    return [e["prompt_ids"] for e in ex], [e["reference"] for e in ex]


def base_model(kind: str, work: Path) -> str:
    if kind == "tiny":
        from lexforge.testing import build_tiny_llama

        return str(build_tiny_llama(work / "tiny-llama-hd32", hidden_size=64, num_heads=2, num_kv_heads=1))
    from lexforge.models import bootstrap_smollm2, models_dir

    return str(bootstrap_smollm2(models_dir() / "smollm2-135m-instruct-fp32", dtype="float32"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per system (seeds seed..seed+repeats-1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rollout", choices=("hf", "vllm"), default="hf", help="lexforge's grpo.rollout_engine")
    ap.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2",
                    help="smollm2 = SmolLM2-135M-Instruct (from the PyPI GGUF); tiny = a random 2-layer Llama")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--reward", default="reference_overlap")
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lexforge-bench-grpo-"))
    os.environ.setdefault("LEXFORGE_HOME", str(work / "home"))
    import ray
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge import ray_auth
    from lexforge.train.rewards import get_reward

    s = settings(args)
    model = base_model(args.model, work)
    reward_fn = get_reward(args.reward)
    tok = AutoTokenizer.from_pretrained(model)
    prompts, refs = eval_prompts(tok, args.eval_prompts)
    ev = dict(reward_fn=reward_fn, g=args.generations, max_new=args.max_completion_length)
    torch.set_num_threads(args.threads)
    with ray_auth.ray_init_env("local"):
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False,
                 configure_logging=False)
    res: dict = {"model": args.model, "settings": s, "lexforge": [], "trl": []}
    res["base_reward"] = eval_reward(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), tok, prompts,
                                     refs, **ev)
    for k in range(args.repeats):
        seed = args.seed + k
        lf = lexforge_run(model, work, s, seed)
        pol = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                                        lf.pop("adapter"))
        lf["reward"] = eval_reward(pol, tok, prompts, refs, **ev)
        res["lexforge"].append(lf)
        tr, trl_model = trl_run(model, work, s, seed, reward_fn)
        tr["reward"] = eval_reward(trl_model, tok, prompts, refs, **ev)
        res["trl"].append(tr)
        print(f"seed {seed}: lexforge {lf['seconds_per_step']:.2f} s/step reward {lf['reward']:.4f} | "
              f"TRL {tr['seconds_per_step']:.2f} s/step reward {tr['reward']:.4f}", flush=True)
    ray.shutdown()
    for side in ("lexforge", "trl"):
        runs = res[side]
        sps, rew = [r["seconds_per_step"] for r in runs], [r["reward"] for r in runs]
        res[f"{side}_summary"] = {"seconds_per_step": statistics.mean(sps), "reward_mean": statistics.mean(rew),
                                  "reward_std": statistics.stdev(rew) if len(rew) > 1 else 0.0}
    L, T = res["lexforge_summary"], res["trl_summary"]
    noise = max(L["reward_std"], T["reward_std"])
    res["seconds_per_step_ratio"] = L["seconds_per_step"] / T["seconds_per_step"]
    res["reward_diff"] = L["reward_mean"] - T["reward_mean"]
    res["reward_noise_std"] = noise
    res["targets"] = {"seconds_per_step_ratio": "<= 1.0", "reward_diff": f">= -{noise:.4f} (run-to-run std)"}
    print(f"base model reward {res['base_reward']:.4f} (eval: {args.eval_prompts} prompts x {args.generations})")
    for name, x in (("lexforge", L), ("TRL", T)):
        print(f"{name:8s} {x['seconds_per_step']:6.2f} s/step  reward after {args.steps} steps "
              f"{x['reward_mean']:.4f} +- {x['reward_std']:.4f} (std over {args.repeats} runs)")
    print(f"seconds/step lexforge / TRL: {res['seconds_per_step_ratio']:.2f} (target <= 1.0); reward lexforge - TRL: "
          f"{res['reward_diff']:+.4f} (noise std {noise:.4f}; target >= -noise)")
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
