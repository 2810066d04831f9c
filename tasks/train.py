"""train: run training as a Ray job on the configured Ray cluster and follow it to the end.

The engine work (submit / re-attach / resume, log and progress polling) is ``lexforge.jobs``; this task only
wires it to Prefect: logs -> the run logger, the run's Progress record -> a progress artifact, links to the
Ray dashboard and the MLflow run -> a markdown artifact. Retries re-enter :func:`lexforge.jobs.dispatch_training`,
which re-attaches to a still-running job or submits the next attempt (resuming from the last checkpoint).
"""

from __future__ import annotations

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from lexforge import jobs
from lexforge.config import JobSpec
from lexforge.console import clean_line, is_progress_bar, progress_bar_done
from tasks.dashboard import artifact_key, mlflow_run_url, ray_job_url


def _retry_unless_cancelled(task, task_run, state) -> bool:
    """No new attempt for an invalid spec/setup, or when on-call cancelled the flow run (``lexforge jobs cancel``)."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, jobs.TrainJobError) and exc.status == "INVALID":
        return False
    try:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(task_run.flow_run_id)
        return fr.state is None or fr.state.type.value not in ("CANCELLING", "CANCELLED")
    except Exception:
        return True


def _percent(p) -> float:
    return max(0.0, min(100.0, 100.0 * p.step / p.total_steps)) if p.total_steps else 0.0


def _describe(p) -> str:
    parts = [f"step {p.step}/{p.total_steps}"]
    for value, fmt in ((p.loss, "loss {:.4f}"), (p.tokens_per_s, "{:.0f} tok/s"), (p.eta_s, "ETA {:.0f}s")):
        if value is not None:
            parts.append(fmt.format(value))
    parts.append(p.status)
    return ", ".join(parts)


@task(name="train", cache_policy=NONE, retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_unless_cancelled)
def train(spec: JobSpec, dataset_digest: str | None = None, entrypoint: str | None = None):
    log = get_run_logger()
    client = jobs.job_client(spec)
    dashboard = jobs.dashboard_url(spec)
    d = jobs.dispatch_training(client, spec, flow_run.get_id(), dataset_digest=dataset_digest, entrypoint=entrypoint)
    log.info("Ray job %s %s (status %s) on %s", d.submission_id, d.how, d.status, dashboard)
    committed = jobs.committed_steps(spec)
    if committed and d.how == "submitted":
        log.info("run %s has committed checkpoints up to step %d: the job resumes from there", spec.name, committed[-1])
    links_key = artifact_key("training-links", spec)
    create_markdown_artifact(
        key=links_key, description=f"training job of {spec.name}",
        markdown=(f"# Training `{spec.name}`\n\n- Ray job: [{d.submission_id}]({ray_job_url(dashboard, d.submission_id)}) "
                  f"({d.how})\n- Ray dashboard: [{dashboard}]({dashboard})\n"),
    )
    progress_id = create_progress_artifact(
        progress=0.0, key=artifact_key("training-progress", spec), description=f"{spec.name}: waiting for the job")

    def on_progress(p) -> None:
        update_progress_artifact(progress_id, _percent(p), description=f"{spec.name}: {_describe(p)}")
        log.info("progress: %s", _describe(p))

    def on_log(line: str) -> None:
        if "LEXFORGE_PROGRESS " in line:  # progress goes to the progress artifact instead
            return
        text = clean_line(line)  # no ANSI codes in Prefect; a tqdm bar only when it completes
        if text.strip() and (not is_progress_bar(text) or progress_bar_done(text)):
            log.info("[ray] %s", text)

    outcome = jobs.follow_job(client, d.submission_id, on_log=on_log,
                              on_progress=on_progress, read_progress=lambda: jobs.read_progress(spec))
    result = jobs.raise_for_outcome(outcome)
    update_progress_artifact(progress_id, 100.0,
                             description=f"{spec.name}: done, {result.get('steps')} steps, loss {result.get('final_loss')}")
    mlflow_url = mlflow_run_url(spec, result.get("mlflow_run_id"))
    create_markdown_artifact(
        key=links_key, description=f"training job of {spec.name}",
        markdown=(
            f"# Training `{spec.name}`\n\n"
            f"- Ray job: [{d.submission_id}]({ray_job_url(dashboard, d.submission_id)}) ({d.how}, {outcome.status})\n"
            f"- Ray dashboard: [{dashboard}]({dashboard})\n"
            f"- MLflow run: " + (f"[{result.get('mlflow_run_id')}]({mlflow_url})" if mlflow_url else "_(no tracking)_")
            + f"\n- steps: {result.get('steps')}, final loss: {result.get('final_loss')}, "
            f"resumed from step: {result.get('resumed_from_step')}\n- output: `{result.get('output_uri')}`\n"
        ),
    )
    from lexforge.storage.records import RunResult
    from lexforge.train import TrainResult

    record = RunResult.model_validate(result)
    return TrainResult.from_record(spec.name, record, jobs.fetch_output(spec))
