"""Load the one JobSpec of a flow run (once) and show what will run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec, load_spec
from tasks.dashboard import artifact_key


@task(name="load-spec", cache_policy=NONE)
def load_job_spec(spec_path: str, overrides: list[str] | None = None) -> JobSpec:
    spec = load_spec(spec_path, overrides or [])
    create_markdown_artifact(
        key=artifact_key("spec", spec),
        description=f"job spec {spec.name}",
        markdown=(
            f"# Job spec `{spec.name}`\n\n"
            f"- spec hash: `{spec.spec_hash()}`\n- file: `{spec_path}`; overrides: `{overrides or []}`\n"
            f"- {spec.stage} / {spec.method} / {spec.strategy}, base model `{spec.model.base}`\n"
            f"- workers: {spec.resources.num_workers} x {spec.resources.gpus_per_worker} GPU\n\n"
            f"```yaml\n{spec.to_yaml()}```\n"
        ),
    )
    return spec
