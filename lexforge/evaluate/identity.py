"""What identifies an evaluation: the digests of the weights, of the suites and of the settings that decide a
report's scores. Two evaluations with the same identity produce the same report, so it can be cached
(``eval-cache/<key>.json``, :func:`lexforge.storage.layout.eval_cache`) and two reports can be checked to be
comparable (same suite digests, same settings)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: Bumped when the report format or the scoring changes, so older cached reports are not reused.
EVAL_FORMAT = 2
#: The files of a LegalBench-layout task that decide what is asked and how it is scored.
SUITE_FILES = ("base_prompt.txt", "test.tsv", "train.tsv")

_DIGESTS: dict[tuple, str] = {}


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` except hidden ones (``.lexforge_complete`` markers, ``.cache`` folders)."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over every (non-hidden) file of a model / adapter directory: relative path + file sha256, in path
    order. A training output and the same output downloaded from the registry have the same digest.
    Memoised per process on (path, size, mtime) of every file, so a 10 GB base model is hashed once."""
    from lexforge.data.store import file_sha256

    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} not found")
    files = _files(root)
    stamp = (str(root.resolve()), tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                                        for f in files))
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
        _DIGESTS[stamp] = h.hexdigest()
    return _DIGESTS[stamp]


def suite_digest(task_dir: str | Path) -> str:
    """sha256 of a suite's prompt template, test rows and label pool (the bytes of its files)."""
    from lexforge.data.store import file_sha256

    d = Path(task_dir)
    h = hashlib.sha256()
    for name in SUITE_FILES:
        f = d / name
        h.update(f"{name}\0{file_sha256(f) if f.is_file() else '-'}\n".encode())
    return h.hexdigest()


def judge_identity(judge: dict | None) -> dict | None:
    """The parts of a judge's description that decide its verdicts (never a key: only the env var's name)."""
    if not judge:
        return None
    return {k: judge.get(k) for k in ("base_url", "model", "system_prompt", "prompt_template", "temperature",
                                      "max_tokens")}


def eval_settings(spec, engine: dict, judge: dict | None) -> dict:
    """Everything besides the weights and the suites that decides a report's scores: the engine actually
    configured (see :func:`lexforge.evaluate.generate.engine_config`), greedy decoding, the prompt rendering and
    the judge."""
    ev = spec.eval
    return {"format": EVAL_FORMAT, "engine": engine, "decoding": {"greedy": True, "max_new_tokens": ev.max_new_tokens},
            "prompt": "user turn through the base model's chat template (as served)",
            "closed_weight": ev.closed_weight, "judge": judge_identity(judge)}


def suites_identity(spec) -> list[dict]:
    return [{"name": s.name, "kind": s.kind, "weight": s.weight, "digest": suite_digest(s.path)}
            for s in spec.eval.suites]


def cache_key(base_digest: str, adapter_digest: str | None, suites: list[dict], settings: dict) -> str:
    """The eval-cache key: changes with the base weights, the adapter, any suite file or any eval setting."""
    ident = {"base": base_digest, "adapter": adapter_digest, "suites": suites, "settings": settings}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
