"""plan: size the training run (workers, memory, hours, cost) and fail fast when it cannot fit."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


@task(name="plan", cache_policy=NONE)
def plan(spec: JobSpec, token_stats: dict | None = None):
    from lexforge.plan import check_fits_or_raise, plan_training
    from lexforge.plan.render import train_markdown

    p = plan_training(spec, token_stats=token_stats)
    create_markdown_artifact(key=artifact_key("training-plan", spec), description=f"training plan for {spec.name}",
                             markdown=f"# Training plan `{spec.name}`\n\n{train_markdown(p)}\n")
    get_run_logger().info("plan: fits=%s workers=%s strategy=%s", p.fits, p.num_workers, p.strategy)
    return check_fits_or_raise(p)
