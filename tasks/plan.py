"""plan: size the training run (workers, memory, hours, cost) and fail fast when it cannot fit."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


@task(name="plan", cache_policy=NONE)
def plan(spec: JobSpec, token_stats: dict | None = None):
    from lexforge import plan as planner

    p = planner.plan_training(spec, token_stats=token_stats)
    reasons = "\n".join(f"- {r}" for r in (getattr(p, "reasons", None) or [])) or "- fits"
    create_markdown_artifact(
        key=artifact_key("training-plan", spec),
        description=f"training plan for {spec.name}",
        markdown=(
            f"# Training plan `{spec.name}`\n\n| field | value |\n|---|---|\n"
            + "".join(f"| {k} | {getattr(p, k, '')} |\n" for k in
                      ("fits", "num_workers", "gpus_per_worker", "strategy", "memory_per_gpu_gb", "hours", "cost_usd"))
            + f"\n{reasons}\n"
        ),
    )
    get_run_logger().info("plan: fits=%s workers=%s", getattr(p, "fits", None), getattr(p, "num_workers", None))
    if hasattr(planner, "check_fits_or_raise"):
        planner.check_fits_or_raise(spec, p)
    elif getattr(p, "fits", True) is False:
        raise RuntimeError(f"training {spec.name} does not fit: {getattr(p, 'reasons', '')}")
    return p
