"""preflight: check every node of the job's Ray cluster before training takes GPUs (report as an artifact)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


class PreflightFailed(RuntimeError):
    pass


@task(name="preflight", cache_policy=NONE, retries=1, retry_delay_seconds=10)
def preflight(spec: JobSpec):
    from lexforge.preflight.run import run_preflight

    report = run_preflight(spec)
    create_markdown_artifact(key=artifact_key("preflight", spec), description=f"preflight of {spec.name}",
                             markdown=f"# Preflight `{spec.name}`\n\n{report.to_markdown()}\n")
    log = get_run_logger()
    for c in report.failed():
        log.error("preflight %s on %s: %s -> %s", c.check, c.node, c.detail, c.fix)
    if not report.ok:
        raise PreflightFailed(f"preflight of {spec.name}: " + "; ".join(f"{c.check} ({c.node}): {c.fix}"
                                                                        for c in report.failed()))
    log.info("preflight: %d node(s), all checks passed", len(report.nodes))
    return report
