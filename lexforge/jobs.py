"""Training as a Ray job: submit, re-attach, follow, stop (no Prefect in here; flows/tasks call it).

A training run is identified by ``spec.name`` (the run name: same name resumes from the latest committed
checkpoint in the store). Every Ray job lexforge submits carries metadata ``lexforge_run`` (run name),
``spec_hash``, ``dataset`` (sanitized data digest, when known), ``flow_run_id`` and ``attempt``, so any
client can find the jobs of a run without extra state.

Idempotency rules of :func:`dispatch_training`:

1. a job of this run that is PENDING/RUNNING (from any flow run) is re-attached, never duplicated;
2. a SUCCEEDED job of this run with the same spec hash and dataset digest (the train split's sha256, which the
   job trains on as stored: it never prepares the data again) is reused (training is done);
3. otherwise submission ids ``lexforge-<run>-<flow run short>-<attempt>`` are tried in order: an id that
   does not exist yet is submitted (a FAILED/STOPPED id is skipped: the new attempt resumes from the
   latest committed checkpoint, because the entrypoint resumes by run name + storage).

The Ray cluster is the one in ``spec.resources.ray_address`` when that is the jobs API URL (``http://...:8265``;
KubeRay: the head service's dashboard port), else ``$LEXFORGE_RAY_DASHBOARD_URL``, else the embedded stack's
dashboard (``lexforge up``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from lexforge.config import JobSpec
from lexforge.train.entrypoint import RESULT_MARKER

ACTIVE = ("PENDING", "RUNNING")
ENTRYPOINT_MODULE = "lexforge.train.entrypoint"
#: Non-secret environment forwarded to the job (credentials must come from the cluster: IRSA, secrets).
FORWARD_ENV = (
    "LEXFORGE_HOME", "LEXFORGE_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "LEXFORGE_TEST",
    "AWS_DEFAULT_REGION", "LEXFORGE_STEP_DELAY_S",  # drills: stretch tiny steps so failures can land mid-training
)


class TrainJobError(RuntimeError):
    """A training Ray job ended FAILED or STOPPED. ``status``/``submission_id`` say which; the message has
    the job's last log lines."""

    def __init__(self, message: str, submission_id: str, status: str):
        super().__init__(message)
        self.submission_id = submission_id
        self.status = status


# ---- where the cluster is ---------------------------------------------------------------------------------------


def dashboard_url(spec: JobSpec | None = None) -> str:
    """The Ray jobs API (dashboard) URL to submit this spec's training to."""
    addr = spec.resources.ray_address if spec is not None else None
    if addr and addr.startswith(("http://", "https://")):
        return addr.rstrip("/")
    env = os.environ.get("LEXFORGE_RAY_DASHBOARD_URL")
    if env:
        return env.rstrip("/")
    from lexforge.stack import load_config

    return load_config().ray_dashboard_url


def _reachable(url: str, timeout: float = 15.0) -> bool:
    """Any HTTP answer (even 401) means the server is there; refused/timeout means it is not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def job_client(spec: JobSpec | None = None, address: str | None = None):
    from ray.job_submission import JobSubmissionClient

    url = address or dashboard_url(spec)
    if not _reachable(url):  # fail in seconds, not after the SDK's GCS timeouts
        raise ConnectionError(
            f"cannot reach the Ray jobs API at {url}. Start the embedded stack (`lexforge up`), or set "
            "resources.ray_address to the cluster's dashboard URL (http://HEAD:8265) / $LEXFORGE_RAY_DASHBOARD_URL")
    from lexforge import ray_auth

    try:  # the Ray token (embedded stack: its 0600 file; KubeRay: $RAY_AUTH_TOKEN from the Secret)
        return JobSubmissionClient(url, headers=ray_auth.http_headers(url))
    except ray_auth.RayAuthError as e:
        raise ConnectionError(f"cannot authenticate to the Ray jobs API at {url}: {e}") from None
    except Exception as e:  # ConnectionError, RuntimeError from the version check
        raise ConnectionError(
            f"cannot reach the Ray jobs API at {url}: {e}. Start the embedded stack (`lexforge up`), or set "
            "resources.ray_address to the cluster's dashboard URL (http://HEAD:8265) / $LEXFORGE_RAY_DASHBOARD_URL"
        ) from None


def _is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def job_python(url: str) -> str:
    """Interpreter for the job's driver: this venv's for a local cluster, ``python`` of the image otherwise."""
    return os.environ.get("LEXFORGE_RAY_PYTHON") or (sys.executable if _is_local(url) else "python")


# ---- ids and lookups --------------------------------------------------------------------------------------------


def submission_id(run_name: str, flow_run_id: str | None, attempt: int) -> str:
    short = (str(flow_run_id).replace("-", "")[:8]) if flow_run_id else "manual"
    return f"lexforge-{run_name}-{short}-{attempt}"


def _status(job) -> str:
    return str(getattr(job.status, "value", job.status))


def jobs_for_run(client, run_name: str | None = None) -> list:
    """lexforge Ray jobs (of one run, or all), oldest first."""
    out = []
    for j in client.list_jobs():
        md = j.metadata or {}
        if "lexforge_run" not in md or (run_name is not None and md["lexforge_run"] != run_name):
            continue
        out.append(j)
    return sorted(out, key=lambda j: j.start_time or 0)


def active_job(client, run_name: str):
    for j in reversed(jobs_for_run(client, run_name)):
        if _status(j) in ACTIVE:
            return j
    return None


def succeeded_job(client, run_name: str, spec_hash: str, dataset: str | None):
    """The latest job of this run that completed training for this spec + data (not one that was preempted)."""
    for j in reversed(jobs_for_run(client, run_name)):
        md = j.metadata or {}
        if _status(j) == "SUCCEEDED" and md.get("spec_hash") == spec_hash and md.get("dataset", "") == (dataset or ""):
            result = parse_result(client.get_job_logs(j.submission_id)) or {}
            if result.get("status", "completed") == "completed":
                return j
    return None


def job_info_or_none(client, sid: str):
    try:
        return client.get_job_info(sid)
    except RuntimeError as e:  # the SDK raises RuntimeError on 404
        if "404" in str(e) or "does not exist" in str(e):
            return None
        raise


# ---- submit -----------------------------------------------------------------------------------------------------


def job_spec(spec: JobSpec) -> JobSpec:
    """The spec as the job sees it. A jobs-API URL in ``resources.ray_address`` is where to submit, not an
    address for ``ray.init``: inside the job, training connects to its own cluster ($RAY_ADDRESS)."""
    if spec.resources.ray_address and spec.resources.ray_address.startswith(("http://", "https://")):
        spec = spec.model_copy(deep=True)
        spec.resources.ray_address = None
    return spec


def runtime_env_for(spec: JobSpec, work_dir: Path) -> dict[str, Any]:
    """working_dir (uploaded by Ray, so it works on remote clusters too) holds ``spec.yaml``; plus env vars."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "spec.yaml").write_text(job_spec(spec).to_yaml(), encoding="utf-8")
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    return {"working_dir": str(work_dir), "env_vars": env}


@dataclass
class Dispatch:
    submission_id: str
    status: str
    how: str  # "submitted" | "attached" | "reused"
    attempt: int | None = None


def dispatch_training(
    client,
    spec: JobSpec,
    flow_run_id: str | None,
    dataset_digest: str | None = None,
    entrypoint: str | None = None,
    max_attempts: int = 50,
    extra_metadata: dict[str, str] | None = None,
) -> Dispatch:
    """Start (or find) the Ray job training ``spec``; see the module docstring for the idempotency rules."""
    run = spec.name
    running = active_job(client, run)
    if running is not None:
        return Dispatch(running.submission_id, _status(running), "attached")
    done = succeeded_job(client, run, spec.spec_hash(), dataset_digest)
    if done is not None:
        return Dispatch(done.submission_id, "SUCCEEDED", "reused")
    url = getattr(client, "_address", None) or dashboard_url(spec)
    for attempt in range(1, max_attempts + 1):
        sid = submission_id(run, flow_run_id, attempt)
        info = job_info_or_none(client, sid)
        if info is not None:
            st = _status(info)
            if st in ACTIVE or st == "SUCCEEDED":
                return Dispatch(sid, st, "attached", attempt)
            continue  # FAILED / STOPPED: next attempt resumes from the latest checkpoint
        cmd = entrypoint or f"{job_python(url)} -m {ENTRYPOINT_MODULE} spec.yaml" + (
            f" --dataset-digest {dataset_digest}" if dataset_digest else "")
        metadata = {"lexforge_run": run, "spec_hash": spec.spec_hash(), "dataset": dataset_digest or "",
                    "flow_run_id": str(flow_run_id or ""), "attempt": str(attempt),
                    "store": spec.storage.resolved_root(), **(extra_metadata or {})}
        with tempfile.TemporaryDirectory(prefix=f"lexforge-job-{run}-") as work:  # uploaded by submit_job
            client.submit_job(entrypoint=cmd, submission_id=sid, runtime_env=runtime_env_for(spec, Path(work)),
                              metadata=metadata, entrypoint_num_cpus=0)
        return Dispatch(sid, "PENDING", "submitted", attempt)
    raise TrainJobError(f"run {run}: {max_attempts} attempts already used by flow run {flow_run_id}; "
                        "start a new flow run (lexforge jobs resume) or investigate the failures", "", "FAILED")


# ---- follow -----------------------------------------------------------------------------------------------------


def parse_result(logs: str) -> dict | None:
    """The last ``LEXFORGE_RESULT {json}`` line of a job's logs."""
    for line in reversed(logs.splitlines()):
        i = line.find(RESULT_MARKER)
        if i >= 0:
            try:
                return json.loads(line[i + len(RESULT_MARKER):])
            except json.JSONDecodeError:
                continue
    return None


@dataclass
class JobOutcome:
    submission_id: str
    status: str
    message: str
    result: dict | None
    log_tail: list[str] = field(default_factory=list)


def follow_job(
    client,
    sid: str,
    on_log: Callable[[str], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    read_progress: Callable[[], dict | None] | None = None,
    poll_s: float = 2.0,
) -> JobOutcome:
    """Poll the job until it is terminal, streaming new log lines to ``on_log`` and progress changes to
    ``on_progress``. Returns the outcome (never raises for a failed job: see :func:`raise_for_outcome`)."""
    seen = 0
    last_progress: dict | None = None
    while True:
        info = client.get_job_info(sid)
        status = _status(info)
        logs = client.get_job_logs(sid)
        if len(logs) > seen:
            new = logs[seen:]
            # emit only complete lines until the job is over
            cut = len(new) if status not in ACTIVE else new.rfind("\n") + 1
            for line in new[:cut].splitlines():
                if on_log and line.strip():
                    on_log(line)
            seen += cut
        if read_progress and on_progress:
            try:
                p = read_progress()
            except Exception:  # progress is best effort; the job's status is the truth
                p = None
            if p and p != last_progress:
                last_progress = p
                on_progress(p)
        if status not in ACTIVE:
            return JobOutcome(sid, status, info.message or "", parse_result(logs), logs.splitlines()[-40:])
        time.sleep(poll_s)


def raise_for_outcome(outcome: JobOutcome) -> dict:
    """The job's result dict, or :class:`TrainJobError` with the log tail (also when training stopped early at
    a checkpoint because it was preempted: the next attempt resumes there)."""
    r = outcome.result
    if outcome.status == "SUCCEEDED" and r is not None and r.get("status", "completed") == "completed":
        return r
    if r is not None and r.get("status") == "invalid":
        raise TrainJobError(f"Ray job {outcome.submission_id}: invalid spec or setup, not retried: {r.get('error')}",
                            outcome.submission_id, "INVALID")
    if r is not None and r.get("status") not in (None, "completed"):
        raise TrainJobError(f"Ray job {outcome.submission_id}: training {r.get('status')} at step {r.get('steps')} "
                            f"({r.get('preemption_reason') or 'stop requested'}); "
                            "the next attempt resumes from the last checkpoint", outcome.submission_id, "PREEMPTED")
    why = "finished without a LEXFORGE_RESULT line" if outcome.status == "SUCCEEDED" else outcome.status
    tail = "\n".join(outcome.log_tail[-20:])
    raise TrainJobError(f"Ray job {outcome.submission_id} {why}: {outcome.message}\n--- last log lines ---\n{tail}",
                        outcome.submission_id, outcome.status)


def stop_run_jobs(client, run_name: str) -> list[str]:
    """Stop every active Ray job of a run; returns the submission ids stopped."""
    stopped = []
    for j in jobs_for_run(client, run_name):
        if _status(j) in ACTIVE:
            client.stop_job(j.submission_id)
            stopped.append(j.submission_id)
    return stopped


# ---- what the run has written to the store --------------------------------------------------------------------


def run_records(spec: JobSpec):
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    return RunRecords(store_for_spec(spec), spec.name)


def read_progress(spec: JobSpec):
    """The run's latest :class:`lexforge.storage.records.Progress` (None before the job reported any)."""
    return run_records(spec).read_progress()


def committed_steps(spec: JobSpec) -> list[int]:
    """Steps of committed, intact checkpoints, ascending."""
    return run_records(spec).committed_steps()


def fetch_output(spec: JobSpec, dest: Path | None = None) -> Path:
    """A local directory with the run's trained output: the store's own folder on a local store, else a copy."""
    records = run_records(spec)
    if not records.has_output():
        raise FileNotFoundError(f"no trained output at {records.output_uri()} (the run has not finished)")
    return records.local_output(dest or Path(tempfile.mkdtemp(prefix=f"lexforge-output-{spec.name}-")))
