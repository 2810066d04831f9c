"""Checkpoint choice (``eval.select_checkpoint``): which weights of a run get registered.

``last``: the run's final output. ``best``: the newest ``eval.checkpoint_candidates`` committed checkpoints are
loaded into the policy (base + LoRA, or full weights) and scored on the **held-out split of the training
data** (never on the gate's eval suites, which must stay unseen by every choice made before the gate):

- SFT: the mean negative log-likelihood per target token of the held-out answers (lower is better);
- DPO: held-out preference accuracy, the share of pairs whose implicit reward prefers the chosen answer
  (log pi/pi_ref of chosen minus that of rejected > 0; pi_ref = the base model; higher is better);
- GRPO: the NLL of the held-out reference answers (a proxy; lower is better).

The best checkpoint (ties: the later step) is exported as a PEFT adapter (or full safetensors weights) with the
tokenizer and its lineage; if it is the final step, the run's own output is used. Checkpoint files are read
only through :class:`lexforge.storage.records.RunRecords` / :class:`lexforge.storage.layout.RunLayout`.
The choice, with every candidate's score and the reason, is stored at :func:`checkpoint_choice_key`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_HELDOUT_ROWS = 512  # enough to rank a handful of checkpoints; bounds the cost on large held-out splits
EXPORT_MARKER = ".lexforge_export.json"  # hidden: not part of the weights digest


def checkpoint_choice_key(run_name: str) -> str:
    """Store key of a run's checkpoint choice record (JSON)."""
    from lexforge.storage.layout import RunLayout

    return RunLayout(run_name).checkpoint_choice


class CheckpointChoiceError(ValueError):
    """The checkpoint choice cannot be made as configured; the message says what to change."""


@dataclass
class CheckpointChoice:
    mode: str  # "last" | "best"
    chosen_step: int
    output_dir: str
    reason: str
    metric: str | None = None
    higher_is_better: bool | None = None
    candidates: list[dict] = field(default_factory=list)  # [{"step", "value"}], oldest first
    heldout_rows: int = 0
    heldout_digest: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_setup(spec) -> None:
    """Fail fast (before training) on a checkpoint choice that cannot work."""
    ev = spec.eval
    if ev.select_checkpoint != "best":
        return
    if not spec.data.validation and spec.data.holdout_fraction <= 0:
        raise CheckpointChoiceError("eval.select_checkpoint=best scores checkpoints on the held-out split of the "
                                    "training data: set data.holdout_fraction > 0 or data.validation")
    if ev.checkpoint_candidates > spec.checkpoint.keep_last:
        raise CheckpointChoiceError(f"eval.checkpoint_candidates={ev.checkpoint_candidates} but only "
                                    f"checkpoint.keep_last={spec.checkpoint.keep_last} checkpoints are kept; "
                                    "raise keep_last or lower checkpoint_candidates")


def metric_of(stage: str) -> tuple[str, bool]:
    """(metric name, higher is better) of the held-out score for a training stage."""
    return ("heldout_preference_accuracy", True) if stage == "dpo" else ("heldout_nll", False)


# ---- loading a committed checkpoint ---------------------------------------------------------------------------


def _local_checkpoint(records, manifest, work: Path) -> Path:
    """A local folder holding the checkpoint's model shards (the store's own folder for local stores)."""
    layout = records.layout
    local = records.store.local_path(layout.checkpoint_dir(manifest.step))
    if local is not None:
        return Path(local)
    dest = work / "download" / layout.step_dir_name(manifest.step)
    shutil.rmtree(dest, ignore_errors=True)
    for rel in manifest.files:
        if rel.startswith(("dcp/", "deepspeed/")):
            records.store.get_file(layout.checkpoint_file(manifest.step, rel), dest / rel)
    return dest


def _device_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def build_policy_for_export(spec, base_path: str):
    """The trained model's shape: the base (+ the spec's LoRA config for lora/qlora), fp32 on CPU, bf16 on GPU."""
    from transformers import AutoModelForCausalLM

    from lexforge.train.model import apply_method

    device, dtype = _device_dtype()
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype,
                                                 trust_remote_code=spec.model.trust_remote_code).to(device)
    # QLoRA trains LoRA weights on a 4-bit base; the adapter itself is the same shape on an unquantised base
    lora_spec = spec.model_copy(update={"method": "lora"}) if spec.method == "qlora" else spec
    return apply_method(lora_spec, model)


def load_checkpoint_weights(spec, model, ckpt_dir: Path, strategy: str) -> None:
    """Load a committed checkpoint's model weights (trainable ones for LoRA) into ``model`` (single process)."""
    is_lora = spec.method in ("lora", "qlora")
    if strategy.startswith("deepspeed"):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag="deepspeed",
                                                      exclude_frozen_parameters=is_lora)
        wanted = {n for n, p in model.named_parameters() if p.requires_grad or not is_lora}
        missing = wanted - set(sd)
        if missing:
            raise CheckpointChoiceError(f"{ckpt_dir}: DeepSpeed checkpoint lacks {len(missing)} weights of the "
                                        f"model, e.g. {sorted(missing)[:3]}")
        model.load_state_dict(sd, strict=not is_lora)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    opts = StateDictOptions(ignore_frozen_params=is_lora)
    state = {"model": get_model_state_dict(model, options=opts)}
    dcp.load(state, checkpoint_id=str(ckpt_dir / "dcp"))
    set_model_state_dict(model, state["model"], options=StateDictOptions(ignore_frozen_params=is_lora,
                                                                        strict=not is_lora))


def _save_export(spec, model, manifest, base_path: str, dest: Path) -> Path:
    from transformers import AutoTokenizer

    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if spec.method in ("lora", "qlora"):
        model.save_pretrained(tmp, safe_serialization=True)
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(spec.model.tokenizer or base_path,
                                  trust_remote_code=spec.model.trust_remote_code).save_pretrained(tmp)
    lineage = {**manifest.lineage.model_dump(mode="json"), "checkpoint_step": manifest.step}
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    (tmp / EXPORT_MARKER).write_text(json.dumps({"step": manifest.step, "committed_at": manifest.committed_at}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def export_checkpoint(spec, step: int, dest: str | Path, *, store=None, work_dir: str | Path | None = None,
                      model=None) -> Path:
    """Write committed checkpoint ``step`` of run ``spec.name`` as a servable folder: PEFT adapter (LoRA/QLoRA)
    or full safetensors weights, + tokenizer + lineage.json (with ``checkpoint_step``). Reuses an earlier
    export of the same commit; ``model`` (from :func:`build_policy_for_export`) saves loading the base again."""
    from lexforge.models import resolve_model_path
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    records = RunRecords(store or store_for_spec(spec), spec.name)
    manifest = records.read_manifest(step)
    if manifest is None:
        raise CheckpointChoiceError(f"run {spec.name} has no committed, intact checkpoint at step {step}")
    dest = Path(dest)
    marker = dest / EXPORT_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == {"step": step, "committed_at": manifest.committed_at}:
        return dest
    base_path = resolve_model_path(manifest.lineage.base_model or spec.model.base)
    model = model if model is not None else build_policy_for_export(spec, base_path)
    work = Path(work_dir) if work_dir else dest.parent
    load_checkpoint_weights(spec, model, _local_checkpoint(records, manifest, work), manifest.strategy)
    return _save_export(spec, model.to("cpu").float() if spec.method == "full" else model, manifest, base_path, dest)


# ---- held-out scores --------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:MAX_HELDOUT_ROWS]


def _target_logprob(model, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """(sum of log p of the labelled tokens, their count) for one sequence."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    y = torch.tensor([labels], device=device)
    with torch.inference_mode():
        logits = model(input_ids=x).logits[:, :-1].float()
    target = y[:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float((logp * mask).sum()), int(mask.sum())


class HeldoutScorer:
    """Scores models on one held-out split; reference log-probs (DPO) are computed once and reused."""

    def __init__(self, spec, heldout_path: Path, base_path: str):
        from lexforge.train.data import tokenize_preference, tokenize_rows
        from lexforge.train.model import build_tokenizer

        self.spec = spec
        self.metric, self.higher_is_better = metric_of(spec.stage)
        tok = build_tokenizer(spec, base_path)
        rows = _read_rows(heldout_path)
        if not rows:
            raise CheckpointChoiceError(f"held-out split {heldout_path} has no rows: select_checkpoint=best needs "
                                        "some (raise data.holdout_fraction or set data.validation)")
        max_len = spec.data.max_seq_len
        if spec.stage == "sft":
            self.examples = [(e["input_ids"], e["labels"]) for e in tokenize_rows(rows, "chat", tok, max_len)]
        elif spec.stage == "grpo":  # the reference answer as the target of the prompt
            pairs = [tokenize_preference({"prompt": r["prompt"], "chosen": r["reference"],
                                          "rejected": r["reference"]}, tok, max_len) for r in rows]
            self.examples = [(p["chosen"]["input_ids"], p["chosen"]["labels"]) for p in pairs if p]
        else:
            self.examples = [p for p in tokenize_rows(rows, "preference", tok, max_len)]
        self.n = len(self.examples)
        self._reference: list[tuple[float, float]] | None = None

    def _pair_logps(self, model) -> list[tuple[float, float]]:
        return [(_target_logprob(model, e["chosen"]["input_ids"], e["chosen"]["labels"])[0],
                 _target_logprob(model, e["rejected"]["input_ids"], e["rejected"]["labels"])[0])
                for e in self.examples]

    def score(self, model, reference=None) -> float:
        model.eval()
        if self.spec.stage != "dpo":
            total, count = 0.0, 0
            for ids, labels in self.examples:
                lp, n = _target_logprob(model, ids, labels)
                total, count = total + lp, count + n
            return -total / max(count, 1)
        if self._reference is None:
            if hasattr(model, "disable_adapter"):  # LoRA: the reference is the policy with the adapter off
                with model.disable_adapter():
                    self._reference = self._pair_logps(model)
            else:
                self._reference = self._pair_logps(reference)
        policy = self._pair_logps(model)
        wins = [(pc - rc) - (pr - rr) > 0 for (pc, pr), (rc, rr) in zip(policy, self._reference)]
        return sum(wins) / len(wins)


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def select_checkpoint(spec, final_output: str | Path, final_step: int, heldout_path: str | Path | None, *,
                      heldout_digest: str | None = None, store=None, work_dir: str | Path | None = None
                      ) -> CheckpointChoice:
    """Choose which weights of the run to register (see the module docstring) and record why."""
    from lexforge.config import lexforge_home
    from lexforge.models import resolve_model_path
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    if spec.eval.select_checkpoint == "last":
        return CheckpointChoice(mode="last", chosen_step=final_step, output_dir=str(final_output),
                                reason="eval.select_checkpoint=last: the run's final weights")
    check_setup(spec)
    if heldout_path is None or not Path(heldout_path).is_file():
        raise CheckpointChoiceError("eval.select_checkpoint=best: the data preparation produced no held-out split "
                                    "(too few rows for data.holdout_fraction?); set data.validation")
    store = store or store_for_spec(spec)
    records = RunRecords(store, spec.name)
    manifests = records.committed()[-spec.eval.checkpoint_candidates:]
    if not manifests:
        raise CheckpointChoiceError(f"run {spec.name} has no committed checkpoints to choose from")
    work = Path(work_dir) if work_dir else lexforge_home() / "work" / spec.name / "checkpoint-choice"
    base_path = resolve_model_path(manifests[-1].lineage.base_model or spec.model.base)
    scorer = HeldoutScorer(spec, Path(heldout_path), base_path)
    model = build_policy_for_export(spec, base_path)
    reference = None
    if spec.stage == "dpo" and spec.method == "full":
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(base_path)
    candidates = []
    for m in manifests:
        load_checkpoint_weights(spec, model, _local_checkpoint(records, m, work), m.strategy)
        value = scorer.score(model, reference)
        candidates.append({"step": m.step, "value": value})
        log.info("checkpoint step %d: %s = %.4f", m.step, scorer.metric, value)
    best = candidates[0]
    for c in candidates[1:]:
        if not _better(best["value"], c["value"], scorer.higher_is_better):  # ties go to the later step
            best = c
    step = best["step"]
    others = ", ".join(f"step {c['step']}: {c['value']:.4f}" for c in candidates if c is not best)
    how = "highest" if scorer.higher_is_better else "lowest"
    reason = (f"step {step} has the {how} {scorer.metric} ({best['value']:.4f}) on {scorer.n} held-out rows of the "
              f"training data among the last {len(candidates)} committed checkpoints" + (f" ({others})" if others else ""))
    if step == final_step:
        out = Path(final_output)
    else:
        from lexforge.storage.layout import RunLayout

        out = export_checkpoint(spec, step, work / RunLayout.step_dir_name(step), store=store, work_dir=work,
                                model=model)
    choice = CheckpointChoice(mode="best", chosen_step=step, output_dir=str(out), reason=reason, metric=scorer.metric,
                              higher_is_better=scorer.higher_is_better, candidates=candidates, heldout_rows=scorer.n,
                              heldout_digest=heldout_digest)
    store.put_bytes(checkpoint_choice_key(spec.name), json.dumps(choice.to_dict(), indent=2).encode())
    return choice
