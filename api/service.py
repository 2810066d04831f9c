"""The fine-tuning API's state machine, independent of HTTP: files in the store, jobs as Prefect flow runs,
events imported from the run, results and checkpoints read through the run's records
(:mod:`lexforge.storage.records`; keys from :mod:`lexforge.storage.layout`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from api import checks
from api.db import ApiDB
from api.errors import ApiError, bad_request, not_found
from api.jobs import (
    FINAL_STATUSES, JobCreate, build_spec, clean_suffix, effective_hyperparameters, fine_tuned_model_name,
    job_object, new_id, resolve_base_model, resolved_hyperparameters,
)
from api.orchestrator import STATUS_BY_STATE, OrchestratorError, PrefectJobs, parse_ts
from api.serving import ServeClient, ServeError, ServeRejected
from api.settings import ApiSettings
from lexforge.storage import open_store
from lexforge.storage.layout import ApiLayout
from lexforge.storage.records import RunRecords

log = logging.getLogger("lexforge.api")

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOB_ID = re.compile(r"^ftjob-[0-9a-f]{24}$")
UPLOAD_PURPOSES = ("fine-tune",)
COPY_CHUNK = 1024 * 1024
MAX_LIST_LIMIT = 10_000
LOG_OVERLAP = 50


def _now() -> int:
    return int(time.time())


def _safe_filename(name: str | None) -> str:
    """Display name only (never used as a path): basename, printable, bounded."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .") or "upload.jsonl"
    return base[:255]


def _log_level(levelno: int) -> str:
    return "error" if levelno >= 40 else "warn" if levelno >= 30 else "info"



def page_after(items: list[dict[str, Any]], after: str | None, limit: int, what: str) -> dict[str, Any]:
    """An OpenAI-style list page: the ``limit`` items after the one whose id is ``after`` (unknown id -> 404)."""
    start = 0
    if after:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise not_found(what, after, "after")
        start = ids.index(after) + 1
    return {"object": "list", "data": items[start:start + limit], "has_more": start + limit < len(items)}

class FineTuningService:
    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self.db = ApiDB(settings.db_path)
        self.store = open_store(settings.resolved_store_root(), endpoint_url=settings.s3_endpoint_url)
        self._orch: PrefectJobs | None = None
        self.serve = (ServeClient(settings.serve_url, settings.serve_api_key, settings.serve_admin_key)
                      if settings.serve_url else None)
        self._refresh_lock = threading.RLock()
        self._retry_at: dict[str, float] = {}  # job id -> monotonic time of the next publish attempt
        self._publish_tries: dict[str, int] = {}
        self._log_offsets: dict[str, int] = {}  # job id -> Prefect logs already imported (minus an overlap)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    @property
    def orchestrator(self) -> PrefectJobs:
        if self._orch is None:
            self._orch = PrefectJobs(self.settings.prefect_api_url, self.settings.deployment,
                                     auth_string=self.settings.prefect_auth_string or None)
        return self._orch

    def start_poller(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="lexforge-api-reconciler", daemon=True)
            self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        if self._orch is not None:
            self._orch.close()
        if self.serve is not None:
            self.serve.close()
        self.db.close()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.reconcile_all()
            except Exception as e:  # keep polling; the next tick retries
                log.warning("reconcile failed: %s: %s", type(e).__name__, e)

    def reconcile_all(self) -> None:
        for row in self.db.jobs_where_status(("validating_files", "queued", "running", "succeeded")):
            if row["status"] == "succeeded":
                if not row["served"] and self.serve is not None and time.monotonic() >= self._retry_at.get(row["id"], 0):
                    with self._refresh_lock:
                        self._publish(self.get_job_row(row["id"]))
                continue
            try:
                self.refresh_job(row["id"])
            except OrchestratorError as e:
                log.warning("job %s: %s", row["id"], e)

    # ---- files ----------------------------------------------------------------------------------------------
    def file_object(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": row["status_details"], "expires_at": None,
        }

    def upload_file(self, stream: BinaryIO, filename: str | None, purpose: str) -> dict[str, Any]:
        if purpose not in UPLOAD_PURPOSES:
            raise bad_request(f"purpose {purpose!r} is not supported here; use one of {list(UPLOAD_PURPOSES)}",
                              "purpose", "invalid_purpose")
        limit = self.settings.max_file_bytes
        file_id = new_id("file")
        digest = hashlib.sha256()
        size = 0
        with tempfile.NamedTemporaryFile(prefix="lexforge-upload-", suffix=".jsonl") as tmp:
            while chunk := stream.read(COPY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"file is larger than the {limit} byte limit of this server "
                                   f"(LEXFORGE_API_MAX_FILE_BYTES)", param="file", code="file_too_large")
                digest.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            if size == 0:
                raise bad_request("file is empty", "file", "empty_file")
            check = checks.check_file(Path(tmp.name))
            if not check.ok:
                raise bad_request(f"invalid fine-tuning file {_safe_filename(filename)!r}: {check.summary}", "file",
                                  "invalid_file_format", report=check.report)
            key = ApiLayout.uploaded_file(file_id)
            self.store.put_file(key, tmp.name)
        row = {
            "id": file_id, "created_at": _now(), "bytes": size, "filename": _safe_filename(filename),
            "purpose": purpose, "status": "processed", "status_details": check.summary, "store_key": key,
            "sha256": digest.hexdigest(), "report": check.report,
        }
        self.db.insert("files", row)
        return self.file_object(self.db.get("files", file_id))

    def get_file_row(self, file_id: str, param: str | None = None) -> dict[str, Any]:
        row = self.db.get("files", file_id) if FILE_ID.match(file_id or "") else None
        if row is None:
            raise not_found("file", file_id, param)
        return row

    def list_files(self, purpose: str | None, after: str | None, limit: int, order: str) -> dict[str, Any]:
        where, args = ("purpose=?", (purpose,)) if purpose else ("", ())
        return self._page("files", after, limit, order == "desc", where, args, self.file_object)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        row = self.get_file_row(file_id)
        busy = [j["id"] for j in self.db.jobs_using_file(file_id) if j["status"] not in FINAL_STATUSES]
        if busy:
            raise ApiError(409, f"file {file_id} is used by unfinished fine-tuning job(s) {busy}; cancel them or wait "
                           f"until they finish", param="file_id", code="file_in_use")
        self.store.delete(row["store_key"])
        self.db.delete("files", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def file_content(self, file_id: str) -> tuple[Path | None, bytes | None, dict[str, Any]]:
        row = self.get_file_row(file_id)
        local = self.store.local_path(row["store_key"])
        if local is not None:
            return local, None, row
        return None, self.store.get_bytes(row["store_key"]), row

    # ---- jobs -----------------------------------------------------------------------------------------------
    def _job_file(self, file_id: str, param: str, want_format: str) -> dict[str, Any]:
        row = self.get_file_row(file_id, param)
        if row["purpose"] != "fine-tune":
            raise bad_request(f"file {file_id} has purpose {row['purpose']!r}; upload training data with purpose "
                              f"'fine-tune'", param, "invalid_file_purpose")
        if row["status"] != "processed":
            raise bad_request(f"file {file_id} is not processed ({row['status']}): {row['status_details']}", param,
                              "file_not_ready")
        fmt = (row["report"] or {}).get("format")
        if fmt and fmt != want_format:
            raise bad_request(f"file {file_id} holds {fmt} rows but this job needs {want_format} rows", param,
                              "invalid_file_format")
        return row

    def create_job(self, req: JobCreate) -> dict[str, Any]:
        s = self.settings
        if req.integrations:
            raise bad_request("integrations (e.g. wandb) are not supported; lexforge tracks every job in MLflow",
                              "integrations", "unsupported_integration")
        if req.metadata and (len(req.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items())):
            raise bad_request("metadata allows at most 16 keys of up to 64 characters with values of up to 512",
                              "metadata", "invalid_metadata")
        mtype, _ = effective_hyperparameters(req)
        want = {"supervised": "chat", "dpo": "preference"}[mtype]
        train = self._job_file(req.training_file, "training_file", want)
        val = self._job_file(req.validation_file, "validation_file", want) if req.validation_file else None
        base_path = resolve_base_model(req.model, s.allowed_models)
        suffix = clean_suffix(req.suffix)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
        job_id = new_id("ftjob")
        spec = build_spec(
            job_id, req, base_model_path=base_path, train_uri=self.store.url(train["store_key"]),
            validation_uri=self.store.url(val["store_key"]) if val else None, data_format=want, seed=seed,
            store_root=self.store.uri, s3_endpoint_url=s.s3_endpoint_url, overrides=s.spec_overrides)
        spec_key = ApiLayout.job_spec(job_id)
        self.store.put_bytes(spec_key, spec.to_yaml().encode())
        spec_path = self._local_spec_path(spec_key, spec)
        created = _now()
        self.db.insert("jobs", {
            "id": job_id, "created_at": created, "model": req.model, "training_file": req.training_file,
            "validation_file": req.validation_file, "suffix": suffix, "seed": seed,
            "hyperparameters": resolved_hyperparameters(spec, mtype), "method": {"type": mtype},
            "metadata": req.metadata, "spec_name": spec.name, "spec_key": spec_key, "status": "validating_files",
        })
        self._event(job_id, "created", f"Created fine-tuning job: {job_id}")
        self._event(job_id, "validating", f"Validating training file: {req.training_file}"
                    + (f" and validation file: {req.validation_file}" if req.validation_file else ""))
        try:
            run = self.orchestrator.create_run({**s.run_parameters, "spec_path": spec_path}, name=job_id,
                                               tags=["lexforge-api", job_id])
        except OrchestratorError as e:
            self.db.delete("jobs", job_id)
            raise ApiError(503, f"could not start the job: {e}", type="server_error",
                           code="orchestrator_unavailable") from None
        self.db.update("jobs", job_id, {"flow_run_id": run["id"], "status": "queued"})
        self._event(job_id, "queued", "Files validated, moving job to queued state",
                    data={"flow_run_id": run["id"], "spec_hash": spec.spec_hash()})
        log.info("job %s -> Prefect flow run %s (spec %s)", job_id, run["id"], spec.spec_hash())
        return self.job(job_id, refresh=False)

    def get_job_row(self, job_id: str) -> dict[str, Any]:
        row = self.db.get("jobs", job_id) if JOB_ID.match(job_id or "") else None
        if row is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return row

    def job(self, job_id: str, refresh: bool = True) -> dict[str, Any]:
        row = self.get_job_row(job_id)
        if refresh and row["status"] not in FINAL_STATUSES:
            try:
                row = self.refresh_job(job_id)
            except OrchestratorError as e:
                log.warning("job %s: status not refreshed: %s", job_id, e)
        obj = job_object(row, self.settings.organization_id)
        if row["status"] == "running":
            obj["estimated_finish"] = self._estimated_finish(row)
        return obj

    def list_jobs(self, after: str | None, limit: int, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        def view(row):
            return job_object(row, self.settings.organization_id)

        conds, args = [], []
        for k, v in (metadata or {}).items():
            if '"' in k or len(k) > 64:
                raise bad_request(f"metadata key {k!r} is not valid", f"metadata[{k}]", "invalid_metadata")
            conds.append("json_extract(metadata_json, ?) = ?")
            args += [f'$."{k}"', v]
        return self._page("jobs", after, limit, True, " AND ".join(conds), tuple(args), view)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        row = self.get_job_row(job_id)
        if row["status"] in FINAL_STATUSES:
            raise bad_request(f"job {job_id} has already {row['status']}; only unfinished jobs can be cancelled",
                              "fine_tuning_job_id", "job_not_cancellable")
        with self._refresh_lock:
            if row["flow_run_id"]:
                try:
                    run = self.orchestrator.cancel_run(row["flow_run_id"])
                except KeyError:
                    run = {}
                if (run.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED"):
                    row = self.refresh_job(job_id)  # it finished before the cancel arrived
                    raise bad_request(f"job {job_id} has already {row['status']}; only unfinished jobs can be "
                                      f"cancelled", "fine_tuning_job_id", "job_not_cancellable")
            self.db.update("jobs", job_id, {"status": "cancelled", "finished_at": _now()})
            self._event(job_id, "cancelled", "Job cancelled by request")
        return self.job(job_id, refresh=False)

    def list_events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        self.get_job_row(job_id)
        try:
            self.refresh_job(job_id)
        except OrchestratorError as e:
            log.warning("job %s: events not refreshed: %s", job_id, e)
        events = list(reversed(self.db.events(job_id)))  # newest first, as the OpenAI API lists them
        data = [{
            "id": e["id"], "object": "fine_tuning.job.event", "created_at": int(e["created_at"]),
            "level": e["level"], "message": e["message"], "data": e["data"] or {}, "type": e["type"],
        } for e in events]
        return page_after(data, after, limit, "event")

    def _records(self, row: dict[str, Any]) -> RunRecords:
        return RunRecords(self.store, row["spec_name"])

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """The run's committed checkpoints, newest first, each with the time it was committed."""
        row = self.get_job_row(job_id)
        model = row["fine_tuned_model"] or fine_tuned_model_name(row["model"], job_id, row["suffix"])
        items = []
        for m in reversed(self._records(row).committed()):
            items.append({
                "id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{m.step:08d}", "object": "fine_tuning.job.checkpoint",
                "created_at": int(m.committed_at), "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{m.step}",
                "fine_tuning_job_id": job_id, "step_number": m.step,
                "metrics": {"step": float(m.step), "train_loss": m.metrics.get("loss"),
                            "valid_loss": m.metrics.get("valid_loss")},
            })
        return page_after(items, after, limit, "checkpoint")

    # ---- reconciliation with Prefect ------------------------------------------------------------------------
    def refresh_job(self, job_id: str) -> dict[str, Any]:
        """Pull the flow run's state history and logs into the job; on success publish the model."""
        with self._refresh_lock:
            row = self.get_job_row(job_id)
            if not row["flow_run_id"]:
                return row
            orch = self.orchestrator
            if row["status"] in FINAL_STATUSES:  # final: only pick up late states/logs (and publish)
                self._import_states(job_id, orch.states(row["flow_run_id"]))
                self._import_logs(job_id, orch.logs(row["flow_run_id"], offset=self._log_offsets.get(job_id, 0)))
                if row["status"] == "succeeded":
                    self._publish(row)
                return self.get_job_row(job_id)
            run = orch.read_run(row["flow_run_id"])
            self._import_states(job_id, orch.states(row["flow_run_id"]))
            self._import_logs(job_id, orch.logs(row["flow_run_id"], offset=self._log_offsets.get(job_id, 0)))
            self._import_progress(row)
            state = run.get("state") or {}
            stype = state.get("type", "SCHEDULED")
            status = STATUS_BY_STATE.get(stype, "queued")
            updates: dict[str, Any] = {}
            if status != row["status"]:
                updates["status"] = status
            if status in ("failed", "cancelled"):
                updates["finished_at"] = int(parse_ts(run.get("end_time")) or time.time())
            if status == "failed":
                updates["error"] = {"code": "training_failed", "param": None,
                                    "message": (state.get("message") or f"flow run {state.get('name', stype)}")[:2000]}
            if status == "succeeded":
                records = self._records(row)
                result, registered = records.read_result(), records.read_registration()
                if result is None or result.status != "completed" or registered is None:
                    missing = "trained model" if result is None or result.status != "completed" else "registered model"
                    updates.update(status="failed", finished_at=_now(), error={
                        "code": "missing_output", "param": None,
                        "message": f"the training flow finished but left no {missing} for job {job_id}"})
                else:
                    name = fine_tuned_model_name(row["model"], job_id, row["suffix"])
                    updates.update(fine_tuned_model=name, finished_at=int(parse_ts(run.get("end_time")) or time.time()),
                                   trained_tokens=result.trained_tokens)
                    updates["result_files"] = [self._write_results_file(row)]
            if updates:
                self.db.update("jobs", job_id, updates)
                if updates.get("status") == "succeeded":
                    self._event(job_id, "model", f"New fine-tuned model created: {updates['fine_tuned_model']}",
                                data={"model_version": registered.uri})
                    self._event(job_id, "succeeded", "The job has successfully completed")
                elif updates.get("status") == "failed":
                    self._event(job_id, "failed", f"Job failed: {updates['error']['message']}", level="error")
            row = self.get_job_row(job_id)
            if row["status"] == "succeeded":
                self._publish(row)
            return self.get_job_row(job_id)

    def _publish(self, row: dict[str, Any]) -> None:
        """Serve the registry version the job's pipeline registered (and evaluated) under the job's model name
        (once): the serving app resolves that version itself, so the served model is the evaluated one, whatever
        the store is (local or S3)."""
        if row["served"] or self.serve is None:
            return
        registered = self._records(row).read_registration()
        if registered is None:
            self._event(row["id"], "serve-rejected", "Model not served: the job's pipeline registered no model",
                        level="warn")
            self.db.update("jobs", row["id"], {"served": -1})
            return
        try:
            self.serve.register_adapter(row["fine_tuned_model"], registered.uri)
        except ServeRejected as e:
            self.db.update("jobs", row["id"], {"served": -1})
            self._event(row["id"], "serve-rejected", f"Model not served: {e}", level="warn")
            return
        except ServeError as e:
            self._event(row["id"], "serve-pending", f"Model not yet served (will retry): {e}", level="warn")
            tries = self._publish_tries[row["id"]] = self._publish_tries.get(row["id"], 0) + 1
            self._retry_at[row["id"]] = time.monotonic() + min(60.0, 2.0 ** tries)  # back off
            log.warning("job %s: %s (retry %d)", row["id"], e, tries)
            return
        self.db.update("jobs", row["id"], {"served": 1})
        self._event(row["id"], "served", f"Model {row['fine_tuned_model']} is available for chat completions")

    def republish(self, model: str) -> bool:
        """Register ``model`` (a succeeded job's fine_tuned_model) with the serving app again; True if it is
        served now. Used when the serving app answers 404 for a model we published (it restarted)."""
        if self.serve is None:
            return False
        row = self.db.job_by_model(model)
        if row is None or row["status"] != "succeeded" or row["served"] == -1:
            return False
        with self._refresh_lock:
            self.db.update("jobs", row["id"], {"served": 0})
            self._publish(self.get_job_row(row["id"]))
            return self.get_job_row(row["id"])["served"] == 1

    def _import_states(self, job_id: str, states: list[dict[str, Any]]) -> None:
        for st in states:
            stype = st.get("type", "")
            status = STATUS_BY_STATE.get(stype, "queued")
            msg = f"Flow run {st.get('name') or stype.title()} (job {status})"
            if st.get("message"):
                msg += f": {st['message']}"
            level = "error" if stype in ("FAILED", "CRASHED") else "info"
            self.db.add_event(job_id, f"ftevent-{st['id']}", parse_ts(st.get("timestamp")) or time.time(), level,
                              msg[:4000], data={"prefect_state": stype})

    def _import_logs(self, job_id: str, logs: list[dict[str, Any]]) -> None:
        # Next time start a little before the end: logs from several processes may land slightly out of order;
        # event ids are the log ids, so re-reading a few is harmless.
        if logs:
            self._log_offsets[job_id] = self._log_offsets.get(job_id, 0) + max(0, len(logs) - LOG_OVERLAP)
        for rec in logs:
            self.db.add_event(job_id, f"ftevent-{rec['id']}", parse_ts(rec.get("timestamp")) or time.time(),
                              _log_level(int(rec.get("level", 20))), str(rec.get("message", ""))[:4000],
                              data={"logger": rec.get("name")})

    def _import_progress(self, row: dict[str, Any]) -> None:
        p = self._records(row).read_progress()
        if p is None:
            return
        data = {"step": p.step, "total_steps": p.total_steps, "train_loss": p.loss, "tokens_per_s": p.tokens_per_s,
                "eta_s": p.eta_s, "trained_tokens": p.trained_tokens}
        loss = f", train loss={p.loss:.4f}" if p.loss is not None else ""
        self.db.add_event(row["id"], f"ftevent-{row['id'].removeprefix('ftjob-')}-step-{p.step:08d}", time.time(),
                          "info", f"Step {p.step}/{p.total_steps}{loss}", type="metrics", data=data)

    def _estimated_finish(self, row: dict[str, Any]) -> int | None:
        p = self._records(row).read_progress()
        return int(time.time() + p.eta_s) if p is not None and p.eta_s is not None else None

    def _write_results_file(self, row: dict[str, Any]) -> str:
        """The OpenAI-style ``step_metrics.csv`` result file, from the job's metrics events."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "train_loss", "total_steps", "tokens_per_s"])
        for e in self.db.events(row["id"]):
            if e["type"] == "metrics" and e["data"]:
                d = e["data"]
                w.writerow([d.get("step"), d.get("train_loss"), d.get("total_steps"), d.get("tokens_per_s")])
        data = buf.getvalue().encode()
        file_id = new_id("file")
        key = ApiLayout.result_file(row["id"], file_id)
        self.store.put_bytes(key, data)
        self.db.insert("files", {
            "id": file_id, "created_at": _now(), "bytes": len(data), "filename": "step_metrics.csv",
            "purpose": "fine-tune-results", "status": "processed", "status_details": None, "store_key": key,
            "sha256": hashlib.sha256(data).hexdigest(), "report": None})
        return file_id

    def _local_spec_path(self, spec_key: str, spec) -> str:
        """The spec file the flow loads: the store copy when the store is local, else a copy next to the db
        (flows load specs from a filesystem path)."""
        local = self.store.local_path(spec_key)
        if local is not None:
            return str(local)
        path = self.settings.db_path.parent / "specs" / f"{spec.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.to_yaml(), encoding="utf-8")
        return str(path)

    # ---- helpers --------------------------------------------------------------------------------------------
    def _event(self, job_id: str, kind: str, message: str, level: str = "info", data: dict | None = None) -> None:
        self.db.add_event(job_id, f"ftevent-{job_id.removeprefix('ftjob-')}-{kind}", time.time(), level, message,
                          data=data)

    def _page(self, table: str, after: str | None, limit: int, desc: bool, where: str, args: tuple, view) -> dict:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}", "limit", "invalid_limit")
        try:
            rows, more = self.db.page(table, after=after, limit=limit, desc=desc, where=where, args=args)
        except KeyError:
            raise not_found("object", after or "", "after") from None
        data = [view(r) for r in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
