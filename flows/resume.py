"""resume: continue a failed or crashed training pipeline (preemption, lost worker) from its last checkpoint.

Started automatically by the ``lexforge-resume-on-failure`` automation (``failed_flow_run_id`` = the run that
failed) or by on-call (``lexforge jobs resume``). The retry budget counts the chain of automatic resumes
(resume of a resume of ...): beyond ``max_attempts`` the flow ends in a FAILED state named
``RetryBudgetExhausted`` (not ``Failed``, so the automation does not fire again) and says what to do.
Training itself re-attaches to a still-running Ray job or resumes from the latest committed checkpoint.
"""

from __future__ import annotations

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed

from flows.retrain import run_pipeline
from tasks.spec import load_job_spec

RESUMABLE = {"FAILED", "CRASHED"}


@task(name="find-origin", cache_policy=NONE)
def find_origin(failed_flow_run_id: str) -> dict:
    """Walk back the chain of resume runs to the original pipeline run: its parameters and the attempt number."""
    with get_client(sync_client=True) as client:
        failed = client.read_flow_run(failed_flow_run_id)
        fr, attempt = failed, 1
        while True:
            flow_name = client.read_flow(fr.flow_id).name
            prev = (fr.parameters or {}).get("failed_flow_run_id") if flow_name == "resume" else None
            if not prev or (fr.parameters or {}).get("manual"):
                break
            fr, attempt = client.read_flow_run(prev), attempt + 1
    params = {**(fr.parameters or {}), **{k: v for k, v in (failed.parameters or {}).items() if v is not None}}
    return {
        "spec_path": params.get("spec_path"), "overrides": params.get("overrides") or [],
        "attempt": attempt, "origin_flow_run_id": str(fr.id),
        "failed_state": failed.state.type.value if failed.state else None, "failed_name": failed.name,
    }


@flow(name="resume", description="Resume a failed/crashed retrain run from its last checkpoint (retry-budgeted).")
def resume(spec_path: str | None = None, overrides: list[str] | None = None, failed_flow_run_id: str | None = None,
           max_attempts: int = 3, train_retries: int = 1, deploy: bool = True, manual: bool = False):
    log = get_run_logger()
    origin = {"spec_path": spec_path, "overrides": overrides or [], "attempt": 1, "failed_state": None}
    if failed_flow_run_id:
        origin = find_origin(failed_flow_run_id)
        spec_path = spec_path or origin["spec_path"]
        overrides = overrides if overrides is not None else origin["overrides"]
    if not spec_path:
        raise ValueError("resume needs spec_path or failed_flow_run_id (a retrain/resume flow run to continue)")
    if failed_flow_run_id and origin["failed_state"] not in RESUMABLE and not manual:
        msg = f"flow run {origin.get('failed_name')} is {origin['failed_state']}, not failed/crashed: nothing to resume"
        log.info(msg)
        return Completed(message=msg)
    attempt = origin["attempt"]
    if attempt > max_attempts and not manual:
        msg = (f"retry budget exhausted: {attempt - 1} automatic resumes already failed (max_attempts={max_attempts}). "
               f"Investigate (logs, Ray dashboard), then `lexforge jobs resume <run>` to try again by hand.")
        create_markdown_artifact(key="resume-budget-exhausted", markdown=f"# Resume stopped\n\n{msg}\n",
                                 description="automatic resume gave up")
        log.error(msg)
        return Failed(name="RetryBudgetExhausted", message=msg)
    log.info("resume attempt %d/%d of %s (spec %s, overrides %s)", attempt, max_attempts,
             origin.get("failed_name") or "manual request", spec_path, overrides)
    spec = load_job_spec(spec_path, overrides)
    return run_pipeline(spec, train_retries=train_retries, deploy=deploy)
