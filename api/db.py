"""The API's own metadata (files, jobs -> Prefect flow run ids, API-side events) in a small sqlite db,
so a restarted service keeps every file and job. Rows are dicts; JSON columns end in ``_json``."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT,
    store_key TEXT NOT NULL,
    sha256 TEXT,
    report_json TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    hyperparameters_json TEXT NOT NULL,
    method_json TEXT NOT NULL,
    metadata_json TEXT,
    spec_name TEXT NOT NULL,
    spec_key TEXT,
    flow_run_id TEXT,
    status TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    result_files_json TEXT NOT NULL DEFAULT '[]',
    error_json TEXT,
    served INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'message',
    data_json TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, created_at);
"""


def _row(cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    out = {}
    for (name, *_), value in zip(cur.description, row):
        if name.endswith("_json"):
            out[name[:-5]] = json.loads(value) if value is not None else None
        else:
            out[name] = value
    return out


class ApiDB:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = _row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _exec(self, sql: str, args: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @staticmethod
    def _columns(values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in values.items():
            if k in ("report", "hyperparameters", "method", "metadata", "result_files", "error", "data"):
                out[f"{k}_json"] = json.dumps(v) if v is not None else None
            else:
                out[k] = v
        return out

    def insert(self, table: str, values: dict[str, Any]) -> None:
        cols = self._columns(values)
        names = ",".join(cols)
        marks = ",".join(f":{c}" for c in cols)
        self._exec(f"INSERT INTO {table} ({names}) VALUES ({marks})", cols)

    def update(self, table: str, ident: str, values: dict[str, Any]) -> None:
        cols = self._columns(values)
        if not cols:
            return
        sets = ",".join(f"{c}=:{c}" for c in cols)
        self._exec(f"UPDATE {table} SET {sets} WHERE id=:__id", {**cols, "__id": ident})

    def get(self, table: str, ident: str) -> dict[str, Any] | None:
        rows = self._exec(f"SELECT * FROM {table} WHERE id=?", (ident,))
        return rows[0] if rows else None

    def delete(self, table: str, ident: str) -> None:
        self._exec(f"DELETE FROM {table} WHERE id=?", (ident,))

    def page(self, table: str, *, after: str | None, limit: int, desc: bool = True,
             where: str = "", args: tuple = ()) -> tuple[list[dict[str, Any]], bool]:
        """Cursor pagination by insertion order; ``after`` is the id of the last item already seen."""
        conds = [where] if where else []
        params: list[Any] = list(args)
        if after:
            ref = self._exec(f"SELECT seq FROM {table} WHERE id=?", (after,))
            if not ref:
                raise KeyError(after)
            conds.append("seq < ?" if desc else "seq > ?")
            params.append(ref[0]["seq"])
        sql = f"SELECT * FROM {table}"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        rows = self._exec(sql, tuple(params))
        return rows[:limit], len(rows) > limit

    def jobs_where_status(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in statuses)
        return self._exec(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)

    def jobs_using_file(self, file_id: str) -> list[dict[str, Any]]:
        return self._exec("SELECT * FROM jobs WHERE training_file=? OR validation_file=?", (file_id, file_id))

    def job_by_model(self, model: str) -> dict[str, Any] | None:
        rows = self._exec("SELECT * FROM jobs WHERE fine_tuned_model=? ORDER BY seq DESC LIMIT 1", (model,))
        return rows[0] if rows else None

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._exec("SELECT * FROM events WHERE job_id=? ORDER BY created_at, seq", (job_id,))

    def add_event(self, job_id: str, event_id: str, created_at: float, level: str, message: str,
                  type: str = "message", data: dict | None = None) -> bool:
        """Insert an event once (ids are stable, so re-imports of the same Prefect state/log are no-ops)."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO events (id, job_id, created_at, level, message, type, data_json) "
                "VALUES (?,?,?,?,?,?,?)",
                (event_id, job_id, created_at, level, message, type, json.dumps(data) if data is not None else None))
            return cur.rowcount > 0
