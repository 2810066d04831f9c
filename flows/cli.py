"""Orchestration commands: ``lexforge deploy-flows``, ``lexforge worker`` and on-call ``lexforge jobs list|resume|cancel``.

Prefect is imported lazily inside the commands (after the embedded stack's env is applied, so
``PREFECT_API_URL`` points at it unless already set).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO / "deployments" / "prefect.yaml"
AUTOMATIONS_FILE = REPO / "deployments" / "automations.yaml"
RESUME_DEPLOYMENT = "resume/lexforge-resume"
console = Console(stderr=True)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _stack_env() -> None:
    """Point clients at the embedded stack unless PREFECT_API_URL etc. are already set."""
    from lexforge.stack import activate_env

    activate_env()
    os.environ.setdefault("LEXFORGE_REPO", str(REPO))


def prefect_ui_url(flow_run_id: str) -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    base = os.environ.get("PREFECT_UI_URL") or (api[:-4] if api.endswith("/api") else api)
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


# ---- deployments ------------------------------------------------------------------------------------------------


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create the work pool if it does not exist. True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
            return True
    if pool.type != pool_type:
        raise ValueError(f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}; "
                         "pick another --pool name or delete it (prefect work-pool delete)")
    return False


def _abs_spec(path: str, base: Path = REPO) -> str:
    """Absolute spec path: paths in prefect.yaml are relative to the repository, CLI paths to the cwd."""
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve())


def apply_deployments(file: Path = DEFAULT_FILE, pool: str | None = None, pool_type: str = "process",
                      spec: str | None = None, cron: str | None = None, only: list[str] | None = None,
                      echo=print) -> dict[str, str]:
    """Apply ``deployments/prefect.yaml``: work pool, deployments (schedules, parameters, tags) and the
    automations declared as deployment triggers. Idempotent (deployments and their automations are upserted)."""
    import yaml
    from prefect import Flow
    from prefect.events import DeploymentTriggerTypes
    from prefect.schedules import Cron
    from pydantic import TypeAdapter

    data = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    trigger_adapter = TypeAdapter(DeploymentTriggerTypes)
    created: dict[str, str] = {}
    pools_done: set[str] = set()
    for d in data.get("deployments") or []:
        if only and d["name"] not in only:
            continue
        pool_name = pool or (d.get("work_pool") or {}).get("name") or "lexforge-local"
        if pool_name not in pools_done:
            if ensure_work_pool(pool_name, pool_type):
                echo(f"work pool {pool_name} ({pool_type}) created")
            pools_done.add(pool_name)
        params = dict(d.get("parameters") or {})
        if "spec_path" in params:
            params["spec_path"] = _abs_spec(spec, Path.cwd()) if spec else _abs_spec(params["spec_path"])
        schedules = [Cron(cron or s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
                     for s in d.get("schedules") or []]
        triggers = []
        for i, t in enumerate(d.get("triggers") or [], start=1):
            t = {**t, "name": t.get("name") or f"{d['name']}__automation_{i}"}
            triggers.append(trigger_adapter.validate_python(t))
        job_variables = {k: v for k, v in ((d.get("work_pool") or {}).get("job_variables") or {}).items()
                         if not (isinstance(v, str) and "{{" in v)}
        flow = Flow.from_source(source=str(REPO), entrypoint=d["entrypoint"])
        dep_id = flow.deploy(
            name=d["name"], work_pool_name=pool_name, parameters=params, tags=d.get("tags") or [],
            description=d.get("description"), schedules=schedules or None, triggers=triggers or None,
            concurrency_limit=d.get("concurrency_limit"), job_variables=job_variables or None,
            print_next_steps=False, ignore_warnings=True,
        )
        full = f"{flow.name}/{d['name']}"
        created[full] = str(dep_id)
        extra = [f"schedule {s.cron} {s.timezone}" for s in schedules] + [f"automation {t.name}" for t in triggers]
        echo(f"deployment {full} -> pool {pool_name}" + (f" ({', '.join(extra)})" if extra else ""))
    for name in apply_automations(AUTOMATIONS_FILE):
        echo(f"automation {name}")
    return created


def apply_automations(file: Path = AUTOMATIONS_FILE) -> list[str]:
    """Upsert (by name) the automations of ``file`` (Prefect's automation format); returns their names."""
    import yaml
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
    names = []
    with get_client(sync_client=True) as client:
        for raw in data.get("automations") or []:
            automation = AutomationCore.model_validate(raw)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:
                    client.delete_automation(extra.id)
            else:
                client.create_automation(automation)
            names.append(automation.name)
    return names


def deploy_flows(
    file: Path = typer.Option(DEFAULT_FILE, help="Prefect deployment file"),
    pool: Optional[str] = typer.Option(None, help="Work pool for all deployments [from the file: lexforge-local]"),
    pool_type: str = typer.Option("process", help="Work pool type when created: process (embedded) or kubernetes"),
    spec: Optional[str] = typer.Option(None, help="Job spec for the retrain/evaluate/promote/deploy deployments"),
    cron: Optional[str] = typer.Option(None, help="Override the retrain schedule, e.g. '0 3 * * 1'"),
    worker: bool = typer.Option(False, "--worker", help="Then start a process worker on the pool (foreground)"),
) -> None:
    """Apply deployments/prefect.yaml: work pool, flows, weekly schedule, resume-on-failure automation."""
    _stack_env()
    created = apply_deployments(file, pool=pool, pool_type=pool_type, spec=spec, cron=cron, echo=console.print)
    print(json.dumps(created, indent=2))
    if worker:
        start_worker(pool or "lexforge-local")


def start_worker(pool: str = typer.Option("lexforge-local", help="Work pool to poll")) -> None:
    """Run a process worker for the pool (same as `prefect worker start --pool POOL --type process`)."""
    from lexforge.procs import bin_path

    _stack_env()
    ensure_work_pool(pool, "process")
    cmd = [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    console.print("$ " + " ".join(cmd))
    os.execv(cmd[0], cmd)


# ---- on-call ----------------------------------------------------------------------------------------------------


def _ray_client(address: str | None):
    from lexforge import jobs

    return jobs.job_client(address=address)


def _flow_run(client, flow_run_id: str | None):
    if not flow_run_id:
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(flow_run_id)
    except (ObjectNotFound, ValueError):
        return None


def _state(fr) -> str:
    return fr.state.type.value if fr is not None and fr.state is not None else "-"


def run_summaries(ray_address: str | None = None) -> list[dict]:
    """One row per run: its latest Ray job, the flow run that owns it, progress from the store."""
    from prefect import get_client

    from lexforge import jobs

    client = _ray_client(ray_address)
    latest: dict[str, object] = {}
    attempts: dict[str, int] = {}
    for j in jobs.jobs_for_run(client):
        run = j.metadata["lexforge_run"]
        latest[run] = j
        attempts[run] = attempts.get(run, 0) + 1
    rows = []
    with get_client(sync_client=True) as pc:
        for run, j in sorted(latest.items()):
            md = j.metadata or {}
            fr = _flow_run(pc, md.get("flow_run_id"))
            progress = ""
            if md.get("store"):
                try:
                    from lexforge.storage import open_store
                    from lexforge.storage.records import RunRecords

                    p = RunRecords(open_store(md["store"], create_bucket=False), run).read_progress()
                    progress = f"{p.step}/{p.total_steps} {p.status}" if p else ""
                except Exception:  # the table is a convenience: an unreachable store leaves the cell empty
                    progress = ""
            rows.append({"run": run, "ray_job": j.submission_id, "job_status": str(j.status.value if hasattr(j.status, "value") else j.status),
                         "jobs": attempts[run], "flow_run": fr.name if fr else (md.get("flow_run_id") or "-"),
                         "flow_run_id": md.get("flow_run_id") or "", "flow_state": _state(fr), "progress": progress})
    return rows


def jobs_list(
    as_json: bool = typer.Option(False, "--json"),
    ray_address: Optional[str] = typer.Option(None, help="Ray jobs API URL [spec/env/embedded stack]"),
) -> None:
    """Training runs on the Ray cluster with their latest job, owning flow run and progress."""
    _stack_env()
    rows = run_summaries(ray_address)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="lexforge training runs")
    for c in ("run", "ray_job", "job_status", "jobs", "flow_run", "flow_state", "progress"):
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(r[c]) for c in ("run", "ray_job", "job_status", "jobs", "flow_run", "flow_state", "progress")))
    Console().print(t)


def resume_run(run: str | None, spec: str | None = None, overrides: list[str] | None = None,
               ray_address: str | None = None, local: bool = False, echo=print) -> dict:
    """Resume a run (idempotent): no-op when it is training or has completed; else start the resume flow
    (through the ``lexforge-resume`` deployment, or in this process with ``local``)."""
    from prefect import get_client

    from lexforge import jobs

    params: dict = {"manual": True}
    if spec:
        params.update(spec_path=_abs_spec(spec, Path.cwd()), overrides=list(overrides or []))
    if run:
        client = _ray_client(ray_address)
        history = jobs.jobs_for_run(client, run)
        if not history and not spec:
            raise LookupError(f"no Ray jobs found for run {run!r}; start it with `lexforge jobs resume --spec SPEC.yaml`")
        if history:
            last = history[-1]
            st = str(getattr(last.status, "value", last.status))
            fr_id = (last.metadata or {}).get("flow_run_id") or None
            with get_client(sync_client=True) as pc:
                fr = _flow_run(pc, fr_id)
            if st in jobs.ACTIVE:
                msg = f"run {run} is training (Ray job {last.submission_id} {st}); nothing to resume"
                echo(msg)
                return {"action": "none", "message": msg}
            if _state(fr) in ("RUNNING", "PENDING", "SCHEDULED"):
                msg = f"run {run}: flow run {fr.name} is {_state(fr)}; nothing to resume"
                echo(msg)
                return {"action": "none", "message": msg}
            if st == "SUCCEEDED" and _state(fr) == "COMPLETED":
                msg = f"run {run} already completed (Ray job {last.submission_id}, flow run {fr.name}); nothing to resume"
                echo(msg)
                return {"action": "none", "message": msg}
            if fr_id and not spec:
                params["failed_flow_run_id"] = fr_id
    if local:
        from flows.resume import resume

        state = resume(**params, return_state=True)
        echo(f"resume flow finished: {state.type.value} {state.message or ''}")
        return {"action": "ran", "state": state.type.value}
    from prefect.deployments import run_deployment

    fr = run_deployment(RESUME_DEPLOYMENT, parameters=params, timeout=0)
    echo(f"resume flow run {fr.name} scheduled: {prefect_ui_url(str(fr.id))}")
    return {"action": "scheduled", "flow_run_id": str(fr.id)}


def jobs_resume(
    run: Optional[str] = typer.Argument(None, help="Run name (spec name) to resume"),
    spec: Optional[str] = typer.Option(None, help="Resume from a spec file instead of the run's last flow run"),
    override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value override (with --spec)"),
    local: bool = typer.Option(False, help="Run the resume flow in this process (no worker needed)"),
    ray_address: Optional[str] = typer.Option(None, help="Ray jobs API URL"),
) -> None:
    """Resume a failed/preempted run from its last checkpoint. No-op (with a message) if running or done."""
    _stack_env()
    if not run and not spec:
        console.print("[red]give a run name or --spec SPEC.yaml[/]")
        raise typer.Exit(2)
    try:
        resume_run(run, spec, override, ray_address, local, echo=console.print)
    except LookupError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)


def cancel_run(run: str, ray_address: str | None = None, echo=print) -> dict:
    """Cancel a run: its non-terminal flow runs (first, so no retry or automation restarts it), then its Ray jobs."""
    from prefect import get_client
    from prefect.states import Cancelled, Cancelling

    from lexforge import jobs

    client = _ray_client(ray_address)
    history = jobs.jobs_for_run(client, run)
    cancelled = []
    with get_client(sync_client=True) as pc:
        for fr_id in dict.fromkeys((j.metadata or {}).get("flow_run_id") for j in history):
            fr = _flow_run(pc, fr_id)
            if fr is None or _state(fr) in TERMINAL:
                continue
            # a worker-run flow is killed by its worker on CANCELLING; an in-process one is marked cancelled
            state = Cancelling(message=f"cancelled by on-call: lexforge jobs cancel {run}") if fr.deployment_id \
                else Cancelled(message=f"cancelled by on-call: lexforge jobs cancel {run}")
            pc.set_flow_run_state(fr.id, state, force=True)
            cancelled.append(fr.name)
    stopped = jobs.stop_run_jobs(client, run)
    if not cancelled and not stopped:
        echo(f"nothing to cancel: run {run} has no active Ray job or flow run")
    else:
        echo(f"run {run}: cancelled flow runs {cancelled or '-'}, stopped Ray jobs {stopped or '-'}")
    return {"flow_runs": cancelled, "ray_jobs": stopped}


def jobs_cancel(
    run: str = typer.Argument(..., help="Run name (spec name)"),
    ray_address: Optional[str] = typer.Option(None, help="Ray jobs API URL"),
) -> None:
    """Stop a run's Ray job and cancel its flow run (idempotent). Checkpoints stay; `jobs resume` continues."""
    _stack_env()
    cancel_run(run, ray_address, echo=console.print)


def _friendly(fn):
    """Unreachable Prefect/Ray -> one red line and exit 1 instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except (ConnectionError, OSError) as e:
            console.print(f"[red]{e}[/]")
            console.print("is the stack up? `lexforge status` (or set PREFECT_API_URL / LEXFORGE_RAY_DASHBOARD_URL)")
            raise typer.Exit(1)

    return wrapper


def register(app: typer.Typer) -> None:
    app.command("deploy-flows")(_friendly(deploy_flows))
    app.command("worker")(start_worker)
    jobs_app = typer.Typer(help="On-call: training runs on Ray (list, resume, cancel).", no_args_is_help=True)
    jobs_app.command("list")(_friendly(jobs_list))
    jobs_app.command("resume")(_friendly(jobs_resume))
    jobs_app.command("cancel")(_friendly(jobs_cancel))
    app.add_typer(jobs_app, name="jobs")

