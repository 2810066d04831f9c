"""Checkpoint choice (``eval.select_checkpoint: best``) on real runs: the real trainer (the Ray Train worker loop,
run in-process as one worker) fine-tunes the tiny Llama with committed DCP checkpoints; the newest ones are
loaded back from the store, scored on the held-out split of the training data, the best one exported and
registered with the reason. Run under the lock (it trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lexforge.storage.layout import RunLayout
import torch

from lexforge.config import spec_from_dict
from lexforge.evaluate.checkpoints import (CheckpointChoiceError, check_setup, checkpoint_choice_key,
                                           export_checkpoint, select_checkpoint)
from lexforge.samples import sample_path

torch.set_num_threads(1)  # 2 shared cores


def _spec(name: str, tmp_path: Path, base: Path, stage: str = "sft", **eval_kw):
    data = "legal_qa.jsonl" if stage == "sft" else "legal_pref.jsonl"
    return spec_from_dict({
        "name": name, "model": {"base": str(base)}, "stage": stage, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(sample_path(data)), "max_seq_len": 128, "holdout_fraction": 0.2},
        "hyperparams": {"max_steps": 6, "per_device_batch_size": 2, "learning_rate": 2e-2, "warmup_ratio": 0.0},
        "checkpoint": {"every_n_steps": 2, "keep_last": 3, "async_save": False},
        # the gate's suites do not exist here: the choice must never read them
        "eval": {"select_checkpoint": "best", "checkpoint_candidates": 3, **eval_kw,
                 "suites": [{"name": "gate-only", "path": str(tmp_path / "no-such-suite")}]},
        "storage": {"root": str(tmp_path / "store")}})


def _train(spec):
    """Prepare the data and run the real training loop in this process (one worker, gloo-free)."""
    from lexforge.data import prepare_dataset
    from lexforge.train.data import resolve_train_data
    from lexforge.train.lineage import build_lineage
    from lexforge.train.loop import train_worker

    prepared = prepare_dataset(spec)
    data = resolve_train_data(spec, prepared)
    lineage = build_lineage(spec, spec.model.base, data.digest, data.format)
    train_worker({"spec": spec.model_dump(mode="json"), "data": data.to_dict(), "base_model": spec.model.base,
                  "lineage": lineage.model_dump(mode="json"), "mlflow_uri": None, "mlflow_run_id": None})
    return prepared


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory, lexforge_home):
    tmp = tmp_path_factory.mktemp("choice")
    spec = _spec("choice-sft", tmp, tiny_model_dir)
    return spec, _train(spec), tmp


def _heldout_nll(spec, base: Path, adapter: Path, heldout: Path) -> float:
    """Token-weighted held-out NLL computed independently: PEFT loads the exported adapter, HF computes the loss."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge.train.data import tokenize_rows

    tok = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(line) for line in heldout.read_text().splitlines() if line.strip()]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    total = count = 0.0
    for ex in tokenize_rows(rows, "chat", tok, spec.data.max_seq_len):
        labels = torch.tensor([ex["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss
        total, count = total + float(loss) * n, count + n
    return total / count


def test_best_checkpoint_on_the_heldout_split_is_exported_and_recorded(sft_run, tiny_model_dir):
    from safetensors.torch import load_file

    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    spec, prepared, tmp = sft_run
    store = store_for_spec(spec)
    records = RunRecords(store, spec.name)
    assert records.committed_steps() == [2, 4, 6]
    output = store.local_path(records.layout.output)
    choice = select_checkpoint(spec, output, 6, prepared.heldout_path, heldout_digest=prepared.digests["heldout"],
                               work_dir=tmp / "work")
    assert choice.mode == "best" and choice.metric == "heldout_nll" and not choice.higher_is_better
    assert [c["step"] for c in choice.candidates] == [2, 4, 6]
    # every candidate's score is the held-out NLL of that checkpoint's weights, computed independently
    for c in choice.candidates:
        exported = export_checkpoint(spec, c["step"], tmp / "exports" / str(c["step"]))
        assert c["value"] == pytest.approx(_heldout_nll(spec, tiny_model_dir, exported, prepared.heldout_path), rel=1e-4)
    best = min(choice.candidates, key=lambda c: (c["value"], -c["step"]))
    assert choice.chosen_step == best["step"] and f"step {best['step']} has the lowest heldout_nll" in choice.reason
    assert 0 < choice.heldout_rows <= len(prepared.heldout_path.read_text().splitlines())
    if best["step"] == 6:
        assert Path(choice.output_dir) == Path(output)  # the final step: the run's own output
    else:
        out = Path(choice.output_dir)
        assert json.loads((out / "lineage.json").read_text())["checkpoint_step"] == best["step"]
    # the final checkpoint exported from its DCP shards holds exactly the weights the trainer wrote as output
    final = export_checkpoint(spec, 6, tmp / "exports" / "6")
    a, b = load_file(final / "adapter_model.safetensors"), load_file(Path(output) / "adapter_model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    # an earlier step's weights differ (the scores above were of different models)
    early = load_file(tmp / "exports" / "2" / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], early[k]) for k in a)
    saved = json.loads(store.get_bytes(checkpoint_choice_key(spec.name)))
    assert saved == json.loads(json.dumps(choice.to_dict())) and saved["heldout_digest"] == prepared.digests["heldout"]


def test_last_takes_the_final_weights_and_bad_setups_fail_fast(sft_run, tmp_path, tiny_model_dir):
    spec, prepared, _ = sft_run
    last = spec.model_copy(update={"eval": spec.eval.model_copy(update={"select_checkpoint": "last"})})
    choice = select_checkpoint(last, "/the/output", 6, None)
    assert choice.mode == "last" and choice.chosen_step == 6 and choice.output_dir == "/the/output"
    with pytest.raises(CheckpointChoiceError, match="holdout_fraction"):
        check_setup(spec_from_dict({**spec.model_dump(mode="json"), "data": {
            **spec.model_dump(mode="json")["data"], "holdout_fraction": 0.0}}))
    with pytest.raises(CheckpointChoiceError, match="keep_last=3"):
        check_setup(_spec("x", tmp_path, tiny_model_dir, checkpoint_candidates=5))
    with pytest.raises(CheckpointChoiceError, match="no committed, intact checkpoint at step 3"):
        export_checkpoint(spec, 3, tmp_path / "nope")


def test_dpo_checkpoints_are_ranked_by_heldout_preference_accuracy(tiny_model_dir, tmp_path, lexforge_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge.storage import store_for_spec
    from lexforge.train.data import tokenize_rows

    spec = _spec("choice-dpo", tmp_path, tiny_model_dir, stage="dpo")
    prepared = _train(spec)
    store = store_for_spec(spec)
    choice = select_checkpoint(spec, store.local_path(RunLayout(spec.name).output), 6, prepared.heldout_path,
                               work_dir=tmp_path / "work")
    assert choice.metric == "heldout_preference_accuracy" and choice.higher_is_better
    # independently: log-probs of chosen/rejected under each checkpoint (PEFT) and under the bare base model
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in prepared.heldout_path.read_text().splitlines() if line.strip()]
    pairs = tokenize_rows(rows, "preference", tok, spec.data.max_seq_len)

    def logps(model):
        out = []
        for p in pairs:
            two = []
            for side in ("chosen", "rejected"):
                ids, labels = torch.tensor([p[side]["input_ids"]]), torch.tensor([p[side]["labels"]])
                with torch.inference_mode():
                    lp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
                tgt = labels[:, 1:]
                two.append(float((lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt != -100)).sum()))
            out.append(two)
        return out

    ref = logps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    for c in choice.candidates:
        d = export_checkpoint(spec, c["step"], tmp_path / "exports" / str(c["step"]))
        pol = logps(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(d)).eval())
        acc = sum((pc - rc) - (pr - rr) > 0 for (pc, pr), (rc, rr) in zip(pol, ref)) / len(pairs)
        assert c["value"] == pytest.approx(acc)
    assert choice.chosen_step == max(choice.candidates, key=lambda c: (c["value"], c["step"]))["step"]


def test_the_chosen_checkpoint_is_registered_with_its_reason(sft_run, mlflow_server, tiny_model_dir):
    from lexforge.registry import register_model
    from lexforge.storage import store_for_spec

    spec, prepared, tmp = sft_run
    spec = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"registered_model": "choice-reg"})})
    # register step 4 as if it had won, through the same record the flow passes
    choice = select_checkpoint(spec, store_for_spec(spec).local_path(RunLayout(spec.name).output), 6,
                               prepared.heldout_path, work_dir=tmp / "work")
    exported = export_checkpoint(spec, 4, tmp / "exports" / "reg4")
    record = {**choice.to_dict(), "chosen_step": 4, "output_dir": str(exported)}

    class Trained:  # the fields register_model reads from a TrainResult
        output_dir, is_adapter, base_model, mlflow_run_id, output_uri, steps = exported, True, str(tiny_model_dir), \
            None, "", 6
        lineage = json.loads((exported / "lineage.json").read_text())

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from eval_helpers import yes_no_mcq_report

    v = register_model(spec, Trained(), yes_no_mcq_report("candidate", 30, 5), selection=record)
    assert v.tags["checkpoint.step"] == "4" and v.tags["checkpoint.mode"] == "best"
    assert v.tags["checkpoint.metric"] == "heldout_nll" and "held-out rows" in v.tags["checkpoint.reason"]
    assert [c["step"] for c in json.loads(v.tags["checkpoint.scores"])] == [2, 4, 6]
    assert v.tags["dataset_digest"] == Trained.lineage["dataset_digest"]


DEEPSPEED_RUN = r"""
import json, os, sys
import torch
import torch.distributed as dist
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_checkpoint_choice import _spec, _train
from lexforge.config import spec_from_dict
from lexforge.evaluate.checkpoints import export_checkpoint, select_checkpoint
from lexforge.storage import store_for_spec
from lexforge.storage.layout import RunLayout
from safetensors.torch import load_file

torch.set_num_threads(1)
tmp, base = Path(sys.argv[2]), Path(sys.argv[3])
d = _spec("choice-ds", tmp, base).model_dump(mode="json")
d["strategy"] = "deepspeed-zero2"
d["hyperparams"]["max_steps"] = 4
spec = spec_from_dict(d)
dist.init_process_group("gloo", rank=0, world_size=1)  # DeepSpeed wants a process group, as under Ray Train
try:
    prepared = _train(spec)
finally:
    dist.destroy_process_group()
out = store_for_spec(spec).local_path(RunLayout("choice-ds").output)
choice = select_checkpoint(spec, out, 4, prepared.heldout_path, work_dir=tmp / "work")
exported = export_checkpoint(spec, 4, tmp / "ds-export-4")
a, b = load_file(exported / "adapter_model.safetensors"), load_file(Path(out) / "adapter_model.safetensors")
print("RESULT " + json.dumps({"choice": choice.to_dict(), "same_keys": sorted(a) == sorted(b),
                              "max_diff": max(float((a[k] - b[k]).abs().max()) for k in a)}))
"""


def test_deepspeed_zero_checkpoints_are_read_back(tiny_model_dir, tmp_path, lexforge_home):
    """ZeRO-2 checkpoints (DeepSpeed's own shards) of a real run, through zero_to_fp32: the final one holds the
    trainer's output weights exactly. In a subprocess: DeepSpeed and the process group stay out of this one."""
    import os
    import subprocess
    import sys

    from lexforge.testing import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LEXFORGE_HOME": str(lexforge_home)}
    r = subprocess.run([sys.executable, "-c", DEEPSPEED_RUN, str(Path(__file__).parent), str(tmp_path),
                        str(tiny_model_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert res["same_keys"] and res["max_diff"] == 0.0
    assert [c["step"] for c in res["choice"]["candidates"]] == [2, 4]
    assert res["choice"]["chosen_step"] == min(res["choice"]["candidates"], key=lambda c: (c["value"], -c["step"]))["step"]
