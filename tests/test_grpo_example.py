"""The SFT -> GRPO example: both specs load, and `model.base: run:<name>` resolves to the parent run's weights
(a LoRA output merged into its base) with the parent recorded in the child's lineage. Resolve-only: no training."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "legal_sft_then_grpo"


def test_example_specs_load():
    from lexforge.config import load_spec

    sft, grpo = load_spec(EXAMPLE / "sft.yaml"), load_spec(EXAMPLE / "grpo.yaml")
    assert (sft.stage, grpo.stage) == ("sft", "grpo")
    assert grpo.model.base == f"run:{sft.name}"
    assert Path(sft.data.train).is_file() and Path(grpo.data.train).is_file()
    assert grpo.storage.root == sft.storage.root  # the parent is looked up in the child's store
    vllm = load_spec(EXAMPLE / "grpo.yaml", ["grpo.rollout_engine=vllm"])
    assert vllm.grpo.rollout_engine == "vllm" and vllm.spec_hash() != grpo.spec_hash()


def _publish_sft_adapter(tiny_model_dir: Path, sft, work: Path) -> "object":
    """A LoRA SFT output as the trainer publishes it: adapter + tokenizer + lineage.json, in the run's store."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge.storage import store_for_spec
    from lexforge.storage.layout import OUTPUT_LINEAGE_NAME
    from lexforge.storage.records import RunRecords
    from lexforge.train.lineage import build_lineage

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.5)
    out = work / "sft-out"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    lineage = build_lineage(sft, str(tiny_model_dir), "d" * 64, "chat")
    (out / OUTPUT_LINEAGE_NAME).write_bytes(lineage.to_json())
    RunRecords(store_for_spec(sft), sft.name).publish_output(out)
    return model, lineage


def test_run_base_resolves_to_merged_parent_with_lineage(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from lexforge.config import load_spec
    from lexforge.train.lineage import build_lineage
    from lexforge.train.parent import ParentNotReady, resolve_base

    monkeypatch.setenv("LEXFORGE_HOME", str(tmp_path / "home"))
    store = f"storage.root={tmp_path / 'store'}"
    sft = load_spec(EXAMPLE / "sft.yaml", [f"model.base={tiny_model_dir}", store])
    grpo = load_spec(EXAMPLE / "grpo.yaml", [store])
    with pytest.raises(ParentNotReady, match="model.base='run:legal-sft-stage1'.*no completed output"):
        resolve_base(grpo)
    peft_model, parent_lineage = _publish_sft_adapter(tiny_model_dir, sft, tmp_path)

    hash_before = grpo.spec_hash()
    path, parent = resolve_base(grpo)
    assert parent == f"{sft.name}@{sft.spec_hash()}"
    assert grpo.spec_hash() == hash_before and grpo.model.base == "run:legal-sft-stage1"  # the spec is not rewritten
    merged = Path(path)
    assert merged.is_dir() and not (merged / "adapter_config.json").exists()
    lineage = build_lineage(grpo, path, "e" * 64, "grpo", parent)
    assert lineage.parent == f"{sft.name}@{sft.spec_hash()}" and lineage.stage == "grpo"
    # the child starts from the parent's weights (base + adapter), not from the parent's base
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        want = peft_model.eval()(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(base, want, atol=1e-3)
    assert resolve_base(grpo)[0] == path  # merged once, reused
    # a run's output folder as model.base links the parent the same way; an explicit tag wins
    tagged = load_spec(EXAMPLE / "grpo.yaml", [store, f"model.base={merged}", "tags.parent_model=mine"])
    assert resolve_base(tagged)[1] == "mine"
    plain = load_spec(EXAMPLE / "grpo.yaml", [store, f"model.base={tiny_model_dir}"])
    assert resolve_base(plain) == (str(tiny_model_dir), None)
    assert parent_lineage.spec_hash == sft.spec_hash()
