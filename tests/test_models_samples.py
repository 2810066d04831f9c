"""The embedded default model converts from the PyPI GGUF and generates; the tiny test model is a real
Llama with a chat template; the shipped sample data is exactly what the generator writes."""

import filecmp
import json
from pathlib import Path

import pytest

from lexforge.samples import DATA_DIR, write_samples


def test_samples_are_reproducible(tmp_path):
    out = write_samples(tmp_path)
    for name in ("legal_qa.jsonl", "legal_pref.jsonl", "legal_grpo.jsonl"):
        assert filecmp.cmp(tmp_path / name, DATA_DIR / name, shallow=False), f"{name} is stale: python -m lexforge.samples"
    for task in ("statute_yes_no", "statute_mcq", "statute_explain"):
        for f in ("train.tsv", "test.tsv", "base_prompt.txt"):
            assert filecmp.cmp(out["legalbench"] / task / f, DATA_DIR / "legalbench" / "tasks" / task / f, shallow=False)


def test_sample_qa_has_about_160_rows_and_some_malformed():
    raw = (DATA_DIR / "legal_qa.jsonl").read_bytes().splitlines()
    assert 150 <= len(raw) <= 180
    bad = 0
    for line in raw:
        try:
            row = json.loads(line.decode("utf-8"))
            msgs = row.get("messages")
            ok = isinstance(msgs, list) and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and m["content"].strip() for m in msgs)
            bad += not ok
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
    assert 8 <= bad <= 20


def test_eval_tasks_do_not_leak_into_training():
    train_text = (DATA_DIR / "legal_qa.jsonl").read_bytes().decode("utf-8", errors="replace")
    for task in ("statute_yes_no", "statute_mcq"):
        lines = (DATA_DIR / "legalbench" / "tasks" / task / "test.tsv").read_text().splitlines()[1:]
        for line in lines:
            question = line.split("\t")[1]
            assert question not in train_text, question


def test_tiny_llama_is_a_real_chat_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "What is theft?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or out[0, -1].item() == tok.eos_token_id
    loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_bootstrap_smollm2_converts_and_answers(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge.models import bootstrap_smollm2, resolve_model_path

    assert (Path(smollm2_dir) / "model.safetensors").is_file()
    assert resolve_model_path("smollm2-135m-instruct") == str(smollm2_dir)
    # idempotent: second call does not convert again
    mtime = (Path(smollm2_dir) / "model.safetensors").stat().st_mtime
    assert bootstrap_smollm2() == smollm2_dir
    assert (Path(smollm2_dir) / "model.safetensors").stat().st_mtime == mtime

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_unknown_model_name_is_a_clear_error(lexforge_home, monkeypatch):
    from lexforge.models import ModelNotFound, resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="lexforge models bootstrap"):
        resolve_model_path("no-such-model")
