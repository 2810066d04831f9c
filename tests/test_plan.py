"""lexforge.plan: hand-computed sanity checks for the serving and fine-tuning planner, HF config.json parsing against
real transformers models, every catalog model, the CLI's JSON output, and spec-based plans (fits / refused)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lexforge.config import spec_from_dict
from lexforge.plan import (
    ModelArch,
    PlanError,
    arch_from_hf_config,
    check_fits_or_raise,
    get_gpu,
    kv_bytes_per_sequence,
    memory_per_gpu,
    model_catalog,
    plan_finetune,
    plan_serving,
    plan_training,
)
from lexforge.plan.cli import register
from lexforge.plan.training import _Inputs, lora_trainable_params

GB = 1e9
SAMPLE_DATA = str(Path(__file__).resolve().parents[1] / "lexforge" / "samples" / "data" / "legal_qa.jsonl")


def llama70b() -> ModelArch:
    return ModelArch(name="dense-70b", total_params=70e9, active_params=70e9, precision="bf16", num_layers=80,
                     hidden_size=8192, num_attention_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=28672,
                     vocab_size=128256, kv_layers=80)


def llama7b() -> ModelArch:
    return ModelArch(name="dense-7b", total_params=7e9, active_params=7e9, precision="bf16", num_layers=32,
                     hidden_size=4096, num_attention_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008,
                     vocab_size=32000, kv_layers=32)


def _inputs(m: ModelArch, method: str = "full", budget: float = 1e15) -> _Inputs:
    return _Inputs(m=m, method=method, stage="sft", compute_bytes=2.0, seq_len=1024, micro_batch=1, grad_ckpt=True,
                   lora_r=16, budget=budget, overhead=0.0)


# ---- serving ---------------------------------------------------------------------------------------------------


def test_70b_bf16_weights_need_at_least_two_h100():
    p = plan_serving(llama70b(), context_len=1024, concurrency=1, gpu="H100")
    assert p.weights_gb == pytest.approx(140.0)
    assert p.fits and p.num_gpus >= 2
    single = [c for c in p.candidates if c["tp"] == 1][0]
    assert not single["fits"] and single["memory_per_gpu_gb"] > 80
    # 64 heads, 8 KV heads: TP 1/2/4/8 are all valid; 2 x 72 GB usable < 140 + KV + 2 x 4 GB reserve -> TP=4
    assert p.tensor_parallel == 4 and p.pipeline_parallel == 1 and p.nodes == 1
    assert p.cost_per_hour == pytest.approx(4 * get_gpu("H100").price_per_gpu_hour)
    assert p.annual_cost_usd == pytest.approx(p.cost_per_hour * 8760, rel=1e-6)


def test_kv_cache_matches_hand_calculation():
    m = llama70b()
    # per token: 80 layers x 2 (K,V) x 8 KV heads x 128 dims x 2 bytes = 327,680 bytes
    assert kv_bytes_per_sequence(m, 1) == 80 * 2 * 8 * 128 * 2 == 327_680
    p = plan_serving(m, context_len=8192, concurrency=8, gpu="B200")
    assert p.kv_cache_gb == pytest.approx(327_680 * 8192 * 8 / GB, abs=0.01)
    # one B200 (172.8 GB usable): 140 GB weights + 21.5 GB KV + 4 GB reserve
    assert p.tensor_parallel == 1
    assert p.memory_per_gpu_gb == pytest.approx(140 + 327_680 * 8192 * 8 / GB + 4, abs=0.01)
    # twice the sequences no longer fit on one: TP=2 halves weights and KV (8 KV heads split over 2 ranks)
    p16 = plan_serving(m, context_len=8192, concurrency=16, gpu="B200")
    assert p16.tensor_parallel == 2
    assert p16.memory_per_gpu_gb == pytest.approx(140 / 2 + 327_680 * 8192 * 16 / 2 / GB + 4, abs=0.01)
    assert p16.max_concurrency_at_context == int((172.8e9 - 70e9 - 4e9) // (327_680 * 8192 / 2))
    # fp8 KV halves it
    assert plan_serving(m, context_len=8192, concurrency=8, kv_dtype="fp8").kv_cache_gb == pytest.approx(
        p.kv_cache_gb / 2, abs=0.01)


def test_sliding_window_and_mla_kv():
    gemma = model_catalog()["Gemma-3-27B"]
    # 10 global layers x 32768 tokens + 52 sliding layers x 1024 tokens, 2 x 16 heads x 128 x 2 bytes each
    assert kv_bytes_per_sequence(gemma, 32768) == 2 * 16 * 128 * 2 * (10 * 32768 + 52 * 1024)
    # shorter than the window: every layer keeps all tokens
    assert kv_bytes_per_sequence(gemma, 512) == 2 * 16 * 128 * 2 * 62 * 512
    ds = model_catalog()["DeepSeek-V4-Pro"]
    assert kv_bytes_per_sequence(ds, 1000) == 61 * (512 + 64) * 2 * 1000
    p = plan_serving(ds, context_len=1000, concurrency=1, gpu="B200")
    assert any("MLA" in a for a in p.assumptions) and any("not verified" in a for a in p.assumptions)


def test_invalid_tp_sizes_are_skipped_and_multi_node_uses_pp():
    # 12 heads / 4 KV heads: TP=8 divides neither -> never a candidate, reason recorded when it would be needed
    m = ModelArch(name="odd-heads", total_params=300e9, active_params=300e9, num_layers=40, hidden_size=6144,
                  num_attention_heads=12, num_kv_heads=4, head_dim=512, kv_layers=40)
    p = plan_serving(m, context_len=4096, concurrency=4, gpu="H100")
    assert all(c["tp"] != 8 for c in p.candidates)
    assert p.tensor_parallel == 4 and p.pipeline_parallel >= 2
    assert any("TP=8" in r for r in p.reasons)
    # Llama-4-Maverick in bf16 (800 GB) exceeds one node of H100 (8 x 72 GB): TP=8 x PP=2 over InfiniBand
    mav = plan_serving("Llama-4-Maverick", context_len=4096, concurrency=4, gpu="H100", precision="bf16")
    assert (mav.tensor_parallel, mav.pipeline_parallel, mav.nodes) == (8, 2, 2)
    assert "InfiniBand" in mav.interconnect
    assert plan_serving("Llama-4-Maverick", context_len=4096, concurrency=4, gpu="H100").num_gpus == 8  # fp8


def test_score_per_dollar_and_price_overrides(monkeypatch):
    assert get_gpu("B200").price_per_gpu_hour == 8.50
    p = plan_serving("Gemma-3-27B", context_len=8192, concurrency=4, gpu="B200", score=0.8)
    assert p.num_gpus == 1 and p.cost_per_hour == 8.50
    assert p.score_per_dollar_hour == pytest.approx(0.8 / 8.50, rel=1e-4)
    monkeypatch.setenv("LEXFORGE_GPU_PRICE_B200", "6.0")
    assert plan_serving("Gemma-3-27B", context_len=8192, concurrency=4).cost_per_hour == 6.0
    assert plan_serving("Gemma-3-27B", context_len=8192, concurrency=4, price=5.0).cost_per_hour == 5.0
    monkeypatch.setenv("LEXFORGE_GPU_PRICE_B200", "cheap")
    with pytest.raises(PlanError, match="LEXFORGE_GPU_PRICE_B200"):
        get_gpu("B200")


def test_gpu_catalog_override_file(tmp_path, monkeypatch):
    f = tmp_path / "gpus.yaml"
    f.write_text("gpus:\n  H100:\n    price_per_gpu_hour: 2.25\n")
    monkeypatch.setenv("LEXFORGE_GPU_CATALOG", str(f))
    g = get_gpu("h100")
    assert g.price_per_gpu_hour == 2.25 and g.memory_gb == 80  # merged over the shipped entry
    f.write_text("gpus: [oops\n")
    with pytest.raises(PlanError, match="line"):
        get_gpu("H100")


def test_serving_that_cannot_fit_says_why():
    p = plan_serving("DeepSeek-V4-Pro", precision="bf16", context_len=131072, concurrency=256, gpu="H100",
                     max_nodes=2)
    assert not p.fits and "does not fit" in p.reasons[0]


# ---- fine-tuning memory ----------------------------------------------------------------------------------------


def test_full_finetune_7b_adamw_is_16_bytes_per_param():
    m = llama7b()
    parts = memory_per_gpu(_inputs(m), "ddp", 1)
    states = parts["weights"] + parts["gradients"] + parts["optimizer"]
    assert states == pytest.approx(16 * 7e9)  # 2 + 2 + 4 (master) + 4 (m) + 4 (v)
    # ZeRO-3 divides all of it by N; ZeRO-2 keeps weights whole
    z3 = memory_per_gpu(_inputs(m), "deepspeed-zero3", 8)
    assert z3["weights"] + z3["gradients"] + z3["optimizer"] == pytest.approx(16 * 7e9 / 8)
    z2 = memory_per_gpu(_inputs(m), "deepspeed-zero2", 8)
    assert z2["weights"] + z2["gradients"] + z2["optimizer"] == pytest.approx(2 * 7e9 + 14 * 7e9 / 8)
    f16 = memory_per_gpu(_inputs(m), "fsdp", 16)
    assert f16["weights"] + f16["gradients"] + f16["optimizer"] == pytest.approx(16 * 7e9 / 16)
    # activations with checkpointing: 32 layers x 2h bytes per token + one layer's full activations
    assert parts["activations"] > 1024 * 32 * 2 * 4096


def test_lora_is_far_smaller_than_full():
    m = llama7b()
    full = memory_per_gpu(_inputs(m, "full"), "ddp", 1)
    lora = memory_per_gpu(_inputs(m, "lora"), "ddp", 1)
    qlora = memory_per_gpu(_inputs(m, "qlora"), "ddp", 1)
    tot = lambda d: sum(v for k, v in d.items() if not k.startswith("_"))  # noqa: E731
    assert tot(lora) < tot(full) / 5
    assert tot(qlora) < tot(lora) / 2
    assert lora["weights"] == pytest.approx(2 * 7e9)
    # r=16, all linears: 32 layers x 16 x [(4096+4096) x 4 + (4096+11008) x 3]
    assert lora_trainable_params(m, 16) == 32 * 16 * (8192 * 4 + 15104 * 3)
    assert lora["adapters+optimizer"] == pytest.approx(16 * lora_trainable_params(m, 16))


def test_finetune_minimum_cluster_and_time():
    m = llama7b()
    lora = plan_finetune(m, method="lora", gpu="H100", tokens=1e9)
    assert lora.fits and lora.num_workers == 1 and lora.strategy == "ddp"
    full = plan_finetune(m, method="full", gpu="H100", tokens=1e9, gradient_checkpointing=False, seq_len=1024)
    assert full.fits and full.num_workers >= 2 and full.strategy in ("deepspeed-zero2", "fsdp", "deepspeed-zero3")
    assert [s for s in full.strategies if s["strategy"] == "ddp"][0]["fits"] is False
    # time from FLOPs: 6 x 7e9 x 1e9 / (N x 989e12 x 0.35)
    expect_h = 6 * 7e9 * 1e9 / (full.num_workers * 989e12 * 0.35) / 3600
    assert full.hours == pytest.approx(expect_h, rel=1e-3)
    assert full.cost_usd == pytest.approx(full.hours * full.num_workers * 4.0, rel=1e-2)
    # LoRA counts 4 x active params (+2 with gradient checkpointing)
    assert lora.flops == pytest.approx((4 + 2) * 7e9 * 1e9)
    assert any("4 x active params" in a for a in lora.assumptions)
    assert plan_finetune(m, method="lora", gpu="H100", tokens=1e9, mfu=0.7).hours == pytest.approx(lora.hours / 2,
                                                                                                    rel=1e-3)


def test_qlora_never_uses_zero3():
    p = plan_finetune("Llama-3.3-70B", method="qlora", gpu="H100")
    assert "deepspeed-zero3" not in [s["strategy"] for s in p.strategies]
    bad = plan_finetune("Llama-3.3-70B", method="qlora", strategy="deepspeed-zero3", gpu="H100")
    assert any("ZeRO-3" in r for r in bad.reasons)


@pytest.mark.parametrize("name", sorted(model_catalog()))
def test_every_catalog_model_plans(name):
    for gpu in ("H100", "H200", "B200"):
        s = plan_serving(name, gpu=gpu)
        assert s.num_gpus >= 1 and s.weights_gb > 0 and json.loads(s.to_json())["model"] == name
        assert "| item | value |" in s.to_markdown()
    for method in ("lora", "qlora", "full"):
        t = plan_finetune(name, method=method, gpu="B200", tokens=1e8)
        assert t.reasons and t.assumptions
        if t.fits:
            assert t.num_workers >= 1 and t.hours and t.hours > 0 and t.cost_usd > 0
        json.loads(t.to_json())
        assert "### Assumptions" in t.to_markdown()


# ---- HF config.json --------------------------------------------------------------------------------------------


def test_hf_config_llama_counts_match_real_model(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    a = arch_from_hf_config(raw)
    torch.manual_seed(0)
    real = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    assert a.total_params == a.active_params == real
    # hand count: embed + lm_head 2 x 1000 x 64; per layer q,o 64x64, k,v 64x32, mlp 3 x 64 x 128, 2 norms
    assert real == 2 * 1000 * 64 + 3 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert (a.num_layers, a.num_kv_heads, a.head_dim, a.attention) == (3, 2, 16, "gqa")
    s = plan_serving(str(tmp_path), context_len=100, concurrency=2, gpu="H100")
    assert s.kv_bytes_per_token == 3 * 2 * 2 * 16 * 2  # layers x (K,V) x KV heads x head dim x bf16


def test_hf_config_mixtral_moe_total_and_active(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2)
    cfg.save_pretrained(tmp_path)
    a = arch_from_hf_config(json.loads((tmp_path / "config.json").read_text()))
    assert a.total_params == sum(p.numel() for p in MixtralForCausalLM(cfg).parameters())
    attn = 2 * 64 * 64 + 2 * 64 * 32
    shared = 2 * 1000 * 64 + 64 + 2 * (attn + 2 * 64 + 64 * 8)  # embeddings, norms, attention, routers
    assert a.total_params == shared + 2 * 8 * 3 * 64 * 96
    assert a.active_params == shared + 2 * 2 * 3 * 64 * 96
    assert a.is_moe and a.num_experts == 8 and a.experts_per_tok == 2


def test_hf_config_deepseek_mla_and_gemma_sliding(tmp_path):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, Gemma3TextConfig

    cfg = DeepseekV3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                           num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32,
                           kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=1,
                           topk_group=1)
    cfg.save_pretrained(tmp_path / "ds")
    a = arch_from_hf_config(json.loads((tmp_path / "ds" / "config.json").read_text()))
    assert a.total_params == sum(p.numel() for p in DeepseekV3ForCausalLM(cfg).parameters())
    assert a.attention == "mla" and kv_bytes_per_sequence(a, 10) == 3 * (16 + 8) * 2 * 10
    g = Gemma3TextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=32)
    g.save_pretrained(tmp_path / "gemma")
    ga = arch_from_hf_config(json.loads((tmp_path / "gemma" / "config.json").read_text()))
    assert ga.sliding_window == 32 and ga.sliding_layers == 10 and ga.kv_layers == 12  # 5:1 local:global


def test_bad_config_and_unknown_model_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8,\n "oops"}')
    with pytest.raises(PlanError, match="line 2"):
        plan_serving(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(PlanError, match="num_hidden_layers"):
        plan_serving(str(tmp_path))
    with pytest.raises(PlanError, match="never downloads"):
        plan_serving("some-org/unknown-model-7b")
    with pytest.raises(PlanError, match="unknown GPU"):
        plan_serving("Gemma-3-27B", gpu="A100")


# ---- JobSpec ---------------------------------------------------------------------------------------------------


def _spec(base: str, **over):
    d = {"name": "plan-test", "model": {"base": base}, "data": {"train": SAMPLE_DATA, "max_seq_len": 256}}
    for k, v in over.items():
        d[k] = v
    return spec_from_dict(d)


def test_spec_plan_for_tiny_model_on_cpu_fits(tiny_model_dir):
    spec = _spec(str(tiny_model_dir), resources={"num_workers": 2, "cpus_per_worker": 1})
    p = plan_training(spec, token_stats={"rows": 100, "total_tokens": 20000, "p50": 180, "p95": 240, "max": 250})
    assert p.fits and p.device == "cpu" and p.gpus_per_worker == 0 and p.num_workers == 2
    assert "CPU run" in p.reasons[0] and p.memory_per_gpu_gb < 1
    assert p.seq_len == 250 and p.tokens == 20000 and p.hours is not None
    assert p.scaling_config() == {"num_workers": 2, "use_gpu": False}
    assert check_fits_or_raise(p) is p
    # the tiny model's config.json, not a catalog guess
    import torch
    from transformers import AutoModelForCausalLM

    real = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).parameters())
    assert p.total_params_b * 1e9 == pytest.approx(real, rel=1e-5)


def test_spec_gpu_plan_chooses_scaling_config(tiny_model_dir):
    spec = _spec(str(tiny_model_dir), resources={"num_workers": 1, "gpus_per_worker": 1, "accelerator_type": "H100"})
    p = plan_training(spec)
    assert p.fits and p.num_workers == 1 and p.strategy == "ddp"
    assert p.scaling_config() == {"num_workers": 1, "use_gpu": True, "resources_per_worker": {"GPU": 1.0},
                                  "accelerator_type": "H100"}
    from ray.train import ScalingConfig

    sc = ScalingConfig(**p.scaling_config())  # the real Ray Train config accepts it
    assert sc.num_workers == 1 and sc.use_gpu and sc.accelerator_type == "H100"
    what_if = plan_training(_spec(str(tiny_model_dir)), gpu="B200")  # CPU spec, sized for B200
    assert what_if.fits and what_if.device == "gpu" and what_if.gpu == "B200"


def test_impossible_job_is_refused_with_reason():
    # full fine-tune of a 70B model with DDP on one H100: 16 bytes/param = 1.1 TB
    spec = _spec("Llama-3.3-70B", method="full", strategy="ddp",
                 resources={"num_workers": 1, "gpus_per_worker": 1, "accelerator_type": "H100"})
    p = plan_training(spec)
    assert not p.fits
    assert any("too small" in r or "does not fit" in r for r in p.reasons)
    assert any(o.startswith("resources.num_workers=") for o in p.suggested_overrides)
    with pytest.raises(PlanError, match="does not fit"):
        check_fits_or_raise(p)
    # nothing fits at all when the cluster is capped
    p2 = plan_training(_spec("DeepSeek-V4-Pro", method="full", strategy="fsdp",
                             resources={"num_workers": 8, "gpus_per_worker": 1, "accelerator_type": "H100"}),
                       max_gpus=16)
    assert not p2.fits and not p2.suggested_overrides
    assert any("no strategy fits" in r for r in p2.reasons)
    # wrong strategy on an adequate cluster: refused, with the strategy that fits
    p3 = plan_training(_spec("Llama-3.1-8B", method="full", strategy="ddp",
                             resources={"num_workers": 8, "gpus_per_worker": 1, "accelerator_type": "H100"}))
    assert not p3.fits and p3.suggested_overrides[0].startswith("strategy=") and p3.suggested_overrides != ["strategy=ddp"]


def test_spec_with_unknown_hub_id_is_a_clear_error():
    with pytest.raises(PlanError, match="no config.json to plan from"):
        plan_training(_spec("acme/legal-llm-13b"))


# ---- CLI -------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_outputs_parse_as_json(cli, tmp_path, tiny_model_dir):
    r = cli("plan", "serve", "GLM-5.2", "--gpu", "B200", "--context", "16384", "--concurrency", "8", "--score",
            "0.7", "--price", "7.5", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["model"] == "GLM-5.2" and d["price_per_gpu_hour"] == 7.5 and d["score_per_dollar_hour"] > 0
    r = cli("plan", "train", "Llama-3.1-8B", "--method", "full", "--pairs", "10000", "--tokens-per-pair", "800",
            "--epochs", "3", "--gpu", "H100", "--mfu", "0.4", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["tokens"] == 10000 * 800 * 3 and d["mfu"] == 0.4 and d["fits"]
    r = cli("plan", "models", "--json")
    assert set(json.loads(r.stdout)) >= {"GLM-5.2", "DeepSeek-V4-Pro", "Qwen3.5-397B", "Nemotron-3-Ultra",
                                          "Llama-4-Maverick", "GPT-OSS-120B", "Gemma-3-27B"}
    assert json.loads(cli("plan", "gpus", "--json").stdout)["B200"]["price_per_gpu_hour"] == 8.5
    # a spec file
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: cli-plan\nmodel:\n  base: {tiny_model_dir}\ndata:\n  train: {SAMPLE_DATA}\n")
    r = cli("plan", "train", str(spec), "--pairs", "50", "--tokens-per-pair", "100", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["device"] == "cpu"
    r = cli("plan", "train", str(spec), "--gpu", "H100", "--markdown")
    assert r.exit_code == 0 and "## Fine-tuning plan" in r.stdout and "| strategy |" in r.stdout


def test_cli_compare_and_adapter_dir(cli, tmp_path, tiny_model_dir):
    r = cli("plan", "compare", "--gpu", "H100", "--gpu", "B200", "--context", "8192", "--concurrency", "4", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * len(model_catalog()) and {x["gpu"] for x in rows} == {"H100", "B200"}
    gemma = {x["gpu"]: x for x in rows if x["model"] == "Gemma-3-27B"}
    assert gemma["B200"]["gpus"] == 1 and gemma["B200"]["cost_per_hour"] == 8.5
    # a PEFT adapter directory is planned as its base model
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    r = cli("plan", "serve", str(adapter), "--context", "128", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["num_gpus"] == 1 and any("PEFT adapter" in a for a in d["assumptions"])


def test_cli_exit_codes(cli):
    r = cli("plan", "train", "DeepSeek-V4-Pro", "--method", "full", "--gpus", "8", "--gpu", "H100", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["fits"] is False
    r = cli("plan", "serve", "no-such-model")
    assert r.exit_code == 2 and "unknown model" in r.output
    r = cli("plan", "train", "Gemma-3-27B", "--pairs", "10")
    assert r.exit_code == 2
    r = cli("plan", "serve", "Gemma-3-27B", "--concurrency", "0")
    assert r.exit_code == 2
    r = cli("plan", "serve", "Gemma-3-27B", "--context", "8192")
    assert r.exit_code == 0 and "Serving plan" in r.stdout and "assumptions" in r.stdout


def test_planner_is_fast_and_light():
    import subprocess
    import sys
    import time

    t = time.time()
    code = ("import sys, lexforge.plan as p; p.plan_serving('DeepSeek-V4-Pro'); "
            "p.plan_finetune('GLM-5.2', method='full', gpu='H100'); "
            "print('prefect' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    assert time.time() - t < 30 and math.isfinite(t)
