"""retrain: sanitize -> plan -> preflight -> train (Ray job) -> choose checkpoint -> evaluate (candidate, base
model, champion) -> register -> decide (paired, vs the champion or the base model) -> promote -> deploy."""

from __future__ import annotations

from prefect import flow

from lexforge.config import JobSpec
from tasks.data import sanitize
from tasks.evaluate import base_model_of, choose_checkpoint, evaluate, evaluate_champion, trained_model
from tasks.plan import plan
from tasks.preflight import preflight
from tasks.registry import decide, promote, register
from tasks.serve import reload_champion
from tasks.spec import load_job_spec
from tasks.train import train


def run_pipeline(spec: JobSpec, train_retries: int = 2, deploy: bool = True) -> dict:
    """The retrain pipeline on an already loaded spec (shared by ``retrain`` and ``resume``: every step is
    idempotent, so running it again after a failure redoes only what is missing)."""
    from lexforge.evaluate.checkpoints import check_setup
    from lexforge.registry import comparison_rows

    check_setup(spec)  # a checkpoint choice that cannot work fails before training
    prepared = sanitize(spec)
    plan(spec, prepared.token_stats)
    preflight(spec)  # every node reachable, same code, storage round trip, capacity, NCCL/IB: before GPUs
    trained = train.with_options(retries=train_retries)(spec, prepared.digests["train"])  # the job reuses it
    chosen, choice = choose_checkpoint(spec, trained, prepared)  # eval.select_checkpoint: last | best
    base_model, adapter = trained_model(chosen)
    # the same suites, prompts, decoding and engine for all three; base and champion come from the eval cache
    # after their first evaluation
    report = evaluate(spec, base_model, adapter, label="candidate")
    base_report = evaluate(spec, base_model_of(spec, chosen), None, label="base")
    champion_report = evaluate_champion(spec)
    version = register(spec, chosen, report, choice)  # the same weights again -> the version registered before
    decision = None
    if "champion" in (version.aliases or []):  # a resubmitted run that already got past promotion
        promoted = True
    else:
        decision = decide(spec, version.name, version.version,
                          {"candidate": report, "base": base_report, "champion": champion_report})
        promoted = promote(spec, version.name, version.version, decision)
    served = reload_champion(spec) if (promoted and deploy) else None
    return {
        "run": spec.name, "spec_hash": spec.spec_hash(), "steps": getattr(trained, "steps", None),
        "checkpoint_step": choice.get("chosen_step"), "model": version.name, "version": str(version.version),
        "blended": report.blended, "base_blended": base_report.blended,
        "promoted": promoted, "reloaded": bool(served and served.get("reloaded")),
        "decision": decision.to_dict() if decision else None,
        "comparison": comparison_rows(decision) if decision else None,
    }


@flow(name="retrain", description="Fine-tune on fresh data, evaluate, register, promote if better, deploy.")
def retrain(spec_path: str, overrides: list[str] | None = None, train_retries: int = 2, deploy: bool = True) -> dict:
    spec = load_job_spec(spec_path, overrides)
    return run_pipeline(spec, train_retries=train_retries, deploy=deploy)


def main(argv: list[str] | None = None) -> dict:
    """``python -m flows.retrain SPEC [k=v ...] [--result-line]``: one flow run against $PREFECT_API_URL."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    result_line = "--result-line" in args
    args = [a for a in args if a != "--result-line"]
    if not args:
        raise SystemExit("usage: python -m flows.retrain SPEC.yaml [dotted.key=value ...] [--result-line]")
    result = retrain(args[0], args[1:])
    print(("LEXFORGE_FLOW_RESULT " if result_line else "") + json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
