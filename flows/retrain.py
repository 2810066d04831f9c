"""retrain: sanitize -> plan -> preflight -> train (Ray job) -> evaluate -> register -> promote -> deploy."""

from __future__ import annotations

from prefect import flow

from lexforge.config import JobSpec
from tasks.data import sanitize
from tasks.evaluate import evaluate, trained_model
from tasks.plan import plan
from tasks.preflight import preflight
from tasks.registry import decide, promote, register
from tasks.serve import reload_champion
from tasks.spec import load_job_spec
from tasks.train import train


def run_pipeline(spec: JobSpec, train_retries: int = 2, deploy: bool = True) -> dict:
    """The retrain pipeline on an already loaded spec (shared by ``retrain`` and ``resume``: every step is
    idempotent, so running it again after a failure redoes only what is missing)."""
    prepared = sanitize(spec)
    plan(spec, prepared.token_stats)
    preflight(spec)  # every node reachable, same code, storage round trip, capacity, NCCL/IB: before GPUs
    trained = train.with_options(retries=train_retries)(spec, prepared.digests["train"])  # the job reuses it
    base_model, adapter = trained_model(trained)
    report = evaluate(spec, base_model, adapter, label="candidate")
    version = register(spec, trained, report)  # the same weights again -> the version registered before
    if "champion" in (version.aliases or []):  # a resubmitted run that already got past promotion
        promoted = True
    else:
        decision = decide(spec, version.name, version.version)
        promoted = promote(spec, version.name, version.version, decision)
    served = reload_champion(spec) if (promoted and deploy) else None
    return {
        "run": spec.name, "spec_hash": spec.spec_hash(), "steps": getattr(trained, "steps", None),
        "model": version.name, "version": str(version.version), "blended": report.to_dict().get("blended"),
        "promoted": promoted, "reloaded": bool(served and served.get("reloaded")),
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
