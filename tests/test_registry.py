"""Model registry on a real MLflow server (sqlite backend; and one with S3 artifacts on moto): register with
evidence, the promotion policy, atomic promote/rollback with audit, and resolving @champion to local files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lexforge.stack import MLFLOW_SERVER_ENV

from lexforge.config import spec_from_dict
from lexforge.procs import bin_path, spawn, stop_group, wait_http
from lexforge.registry import (
    PromotionRefused,
    RegistryError,
    audit_log,
    decide_promotion,
    list_versions,
    promote,
    register_model,
    resolve_servable,
    rollback,
    weights_digest,
)
from lexforge.registry.core import aliases_of, client
from lexforge.samples import sample_path
from lexforge.testing import free_port

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import yes_no_mcq_report  # noqa: E402

TASKS = sample_path("legalbench", "tasks")

import torch  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores


def _report(label, yes_no_right, mcq_right, cost=None):
    """A report as run_eval writes it (real scorers, real intervals) for a model right on the first
    ``yes_no_right`` of the 58 yes/no items and the first ``mcq_right`` of the 10 multiple-choice items."""
    return yes_no_mcq_report(label, yes_no_right, mcq_right, cost=cost)


def _train_result(spec, adapter_dir: Path, base: Path, digest="d" * 64):
    from lexforge.train.run import TrainResult

    return TrainResult(run_name=spec.name, output_dir=adapter_dir, output_uri=f"store://runs/{spec.name}/output",
                       is_adapter=True, base_model=str(base), steps=3, final_loss=1.0, resumed_from_step=None,
                       mlflow_run_id=None, lineage={"spec_hash": spec.spec_hash(), "dataset_digest": digest})


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Four real PEFT LoRA adapters on the tiny model (different seeds -> different weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for seed in range(4):
        torch.manual_seed(seed)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        d = tmp_path_factory.mktemp(f"adapter{seed}") / "adapter"
        m.save_pretrained(d)
        out.append(d)
    return out


def _spec(name, tmp_path, base=None, **promotion):
    return spec_from_dict({"name": name, "data": {"train": "unused.jsonl"},
                           "storage": {"root": str(tmp_path / "store")},
                           **({"model": {"base": str(base)}} if base else {}),
                           "eval": {"engine": "transformers", "max_new_tokens": 4, "batch_size": 32, "suites": [
                               {"name": "yes_no", "path": str(TASKS / "statute_yes_no")},
                               {"name": "mcq", "path": str(TASKS / "statute_mcq")}]},
                           "promotion": {"registered_model": name, **promotion}})


# ---- registry on a real MLflow server ------------------------------------------------------------------------


def test_register_gate_promote_resolve_rollback_audit(mlflow_server, tmp_path, tiny_model_dir, adapters,
                                                      monkeypatch):
    monkeypatch.setenv("LEXFORGE_ACTOR", "alice@firm")
    monkeypatch.setenv("LEXFORGE_HOME", str(tmp_path / "home"))
    name = "legal-reg-a"
    spec = _spec(name, tmp_path, min_improvement=0.01, max_suite_regression=0.02)

    base = _report("base", 20, 3)  # what the base model scored on the same items
    r1 = _report("v1", 35, 5)
    v1 = register_model(spec, _train_result(spec, adapters[0], tiny_model_dir), r1)
    assert v1.version == "1" and v1.aliases == ["challenger"]
    # registering the same weights again (a pipeline resumed after registration) returns the same version
    again = register_model(spec, _train_result(spec, adapters[0], tiny_model_dir), r1)
    assert again.version == "1" and again.aliases == ["challenger"]
    assert [v.version for v in client().search_model_versions(f"name = '{name}'")] == ["1"]
    assert v1.tags["weights_digest"] == weights_digest(adapters[0]) and len(v1.tags["register_key"]) == 32
    assert v1.tags["base_model"] == str(tiny_model_dir) and v1.tags["spec_hash"] == spec.spec_hash()
    assert v1.tags["dataset_digest"] == "d" * 64 and v1.tags["is_adapter"] == "true"
    assert float(v1.tags["eval.blended"]) == pytest.approx(r1.blended, abs=1e-6)
    assert float(v1.tags["eval.suite.mcq"]) == pytest.approx(r1.suites["mcq"]["score"], abs=1e-6)
    assert json.loads(v1.tags["eval.blended_ci"]) == pytest.approx(r1.blended_ci, abs=1e-6)

    # no champion yet: the base model is the baseline (without its report the gate cannot pass)
    d0 = decide_promotion(spec, name, "1", record=False)
    assert not d0.promote and "no report of the base model" in d0.reasons[0]
    d1 = decide_promotion(spec, name, "1", reports={"base": base})
    assert d1.promote and d1.champion is None and d1.baseline == "base" and d1.verdict == "better", d1.reasons
    promote(name, "1", d1, reason="first model")
    c = client()
    assert aliases_of(c, name) == {"champion": "1"}  # challenger alias consumed by the promotion
    mv1 = c.get_model_version(name, "1")
    assert mv1.tags["promotion.baseline"] == "base" and mv1.tags["promotion.verdict"] == "better"
    assert "| yes_no (closed) |" in mv1.description and "base model" in mv1.description  # shown on the version

    # v2: better blended, but one suite regresses beyond tolerance -> refused, reasons recorded. The champion's
    # report (with its items) comes back from the registry.
    v2 = register_model(spec, _train_result(spec, adapters[1], tiny_model_dir), _report("v2", 58, 4))
    d2 = decide_promotion(spec, name, v2.version)
    assert d2.baseline == "champion" and d2.verdict == "better"
    assert not d2.promote and any(r.startswith("FAIL suite mcq") for r in d2.failed_reasons())
    with pytest.raises(PromotionRefused, match="suite mcq"):
        promote(name, v2.version, d2)
    tags2 = c.get_model_version(name, "2").tags
    assert tags2["promotion.decision"] == "reject" and "suite mcq" in tags2["promotion.reasons"]
    md = d2.to_markdown()
    assert "KEEP v1" in md and "| mcq (closed) |" in md and "compared with champion v1" in md
    assert aliases_of(c, name) == {"champion": "1", "challenger": "2"}

    # v3: one more right answer than the champion: a higher score, but not distinguishable -> refused
    v3 = register_model(spec, _train_result(spec, adapters[2], tiny_model_dir), _report("v3", 36, 5))
    d3 = decide_promotion(spec, name, v3.version)
    assert not d3.promote and d3.verdict == "not distinguishable"
    assert any("not distinguishable at 90%" in r for r in d3.failed_reasons())

    # v4: distinguishably better on every count -> promoted; v1 becomes previous_champion first
    v4 = register_model(spec, _train_result(spec, adapters[3], tiny_model_dir), _report("v4", 52, 6))
    d4 = decide_promotion(spec, name, v4.version)
    assert d4.promote, d4.reasons
    promote(name, v4.version, d4)
    # (registering v4 moved @challenger to v4; promoting it consumed the alias)
    assert aliases_of(c, name) == {"champion": "4", "previous_champion": "1"}
    t4 = c.get_model_version(name, "4").tags
    assert t4["promotion.promoted_by"] == "alice@firm" and t4["promotion.replaced_version"] == "1"

    # resolve @champion to local, servable files: the exact adapter registered as v4, loadable by PEFT
    s = resolve_servable(f"models:/{name}@champion")
    assert s.version == "4" and s.base_model == str(tiny_model_dir)
    ad = Path(s.adapter_path)
    assert (ad / "adapter_config.json").is_file()
    assert (ad / "adapter_model.safetensors").read_bytes() == (adapters[3] / "adapter_model.safetensors").read_bytes()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(s.base_model), s.adapter_path)

    # rollback: champion back to v1 in one move; v4 marked; no further rollback target
    back = rollback(name, reason="client complaint about v4")
    assert back.version == "1"
    assert aliases_of(c, name) == {"champion": "1"}
    t4 = c.get_model_version(name, "4").tags
    assert t4["promotion.status"] == "rolled_back" and t4["promotion.rollback_reason"] == "client complaint about v4"
    with pytest.raises(RegistryError, match="no previous_champion"):
        rollback(name)
    assert resolve_servable(name, "champion").version == "1"

    log = audit_log(name)
    actions = [e["action"] for e in log]
    assert actions.count("register") == 4 and actions.count("promote") == 2 and actions[-1] == "rollback"
    assert all(e["by"] == "alice@firm" and e["at"] for e in log)
    assert log[-1]["version"] == "1" and log[-1]["from_version"] == "4"
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    # the decision and audit entries are also artifacts of the version's run
    run_files = [f.path for f in c.list_artifacts(c.get_model_version(name, "4").run_id, "promotion")]
    assert any(p.endswith(".md") for p in run_files) and any(p.endswith(".json") for p in run_files)
    assert [v.version for v in list_versions(name)] == ["1", "2", "3", "4"]


def test_cli_promote_auto_list_rollback(mlflow_server, tmp_path, tiny_model_dir, adapters):
    name = "legal-reg-cli"
    spec = _spec(name, tmp_path, base=tiny_model_dir, require_not_costlier=True)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    env = {**os.environ, "LEXFORGE_ACTOR": "bob@firm", "LEXFORGE_HOME": str(tmp_path / "home")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lexforge.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    register_model(spec, _train_result(spec, adapters[0], tiny_model_dir), _report("a", 40, 6, cost=4.0))
    # no champion: the gate needs the base model's report on the same suites, and says how to get it
    r = cli("promote", name, "--auto", "--spec", str(spec_file))
    assert r.returncode == 1 and "lexforge eval SPEC --baseline" in r.stdout
    # evaluated once (the tiny random base really generates), then stored in the eval cache
    r = cli("eval", str(spec_file), "--baseline", "--cost-per-hour", "4.0")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("eval", str(spec_file), "--baseline", "--cost-per-hour", "4.0")
    assert r.returncode == 0 and "stored report of the same weights" in r.stderr
    r = cli("promote", name, "--auto", "--spec", str(spec_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROMOTE v1" in r.stdout and "compared with the base model" in r.stdout
    # costlier challenger is refused under require_not_costlier (exit 1, champion unchanged)
    register_model(spec, _train_result(spec, adapters[1], tiny_model_dir), _report("b", 58, 10, cost=8.5))
    r = cli("promote", name, "--auto", "--spec", str(spec_file))
    assert r.returncode == 1 and "FAIL cost" in r.stdout
    # a person can force it; recorded as FORCED with their reason
    r = cli("promote", name, "2", "--spec", str(spec_file), "--force", "--reason", "partner sign-off")
    assert r.returncode == 0, r.stderr
    tags = client().get_model_version(name, "2").tags
    assert tags["promotion.reason"].startswith("FORCED") and "partner sign-off" in tags["promotion.reason"]
    r = cli("registry", "list", name, "--json")
    rows = {v["version"]: v for v in json.loads(r.stdout)}
    assert rows["2"]["aliases"] == ["champion"] and rows["1"]["aliases"] == ["previous_champion"]
    r = cli("rollback", name, "--reason", "cost")
    assert r.returncode == 0, r.stderr
    assert aliases_of(client(), name)["champion"] == "1"
    r = cli("rollback", name)
    assert r.returncode == 2 and "no previous_champion" in r.stderr
    r = cli("registry", "audit", name)
    assert [json.loads(l)["action"] for l in r.stdout.splitlines()][-1] == "rollback"


def test_registry_with_s3_artifacts(moto_s3, tmp_path, tiny_model_dir, adapters, monkeypatch):
    """A second MLflow server whose artifacts live in S3 (moto); resolve_servable pulls them back through it."""
    import boto3

    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1").create_bucket(Bucket="mlflow-art")
    port = free_port()
    log = tmp_path / "mlflow-s3.log"
    proc = spawn([bin_path("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", "s3://mlflow-art/lexforge", "--serve-artifacts", "--workers", "1"],
                 log, env={"MLFLOW_S3_ENDPOINT_URL": moto_s3, **MLFLOW_SERVER_ENV})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=120, proc=proc, log_path=log)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("LEXFORGE_HOME", str(tmp_path / "home"))
        name = "legal-reg-s3"
        spec = _spec(name, tmp_path)
        v = register_model(spec, _train_result(spec, adapters[0], tiny_model_dir), _report("s3", 40, 6))
        promote(name, v.version, decide_promotion(spec, name, v.version, reports={"base": _report("base", 20, 3)}))
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
                .list_objects_v2(Bucket="mlflow-art")["Contents"]]
        assert any(k.endswith("model/adapter_model.safetensors") for k in keys)
        s = resolve_servable(name)
        assert (Path(s.adapter_path) / "adapter_model.safetensors").read_bytes() == \
            (adapters[0] / "adapter_model.safetensors").read_bytes()
    finally:
        stop_group(proc.pid)
