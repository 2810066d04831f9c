"""Log a prepared dataset's lineage to the active MLflow run as dataset inputs (+ report/lineage artifacts)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

#: Splits up to this many rows are logged as pandas datasets (MLflow shows schema, row count, preview);
#: larger ones as metadata-only datasets, so logging never loads a huge file into memory.
PANDAS_MAX_ROWS = 50_000


def _frame(path: Path):
    import pandas as pd

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            rows.append({k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in obj.items()})
    return pd.DataFrame(rows)


def _dataset(path: Path, uri: str, name: str, digest: str, rows: int) -> Any:
    import mlflow.data
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(uri)
    short = digest[:32]  # MLflow's digest column holds 36 characters; the full sha256 goes into a tag
    if rows <= PANDAS_MAX_ROWS and path.is_file():
        return mlflow.data.from_pandas(_frame(path), source=source, name=name, digest=short)
    return MetaDataset(source, name=name, digest=short)


def log_lineage_to_mlflow(prepared: Any) -> bool:
    """If an MLflow run is active, log train/heldout as dataset inputs and report/lineage as artifacts.

    Returns True when something was logged, False when there is no active run.
    """
    import mlflow

    if mlflow.active_run() is None:
        return False
    lineage = prepared.lineage
    splits = lineage.get("splits", {})
    for part, context, path in (("train", "training", prepared.train_path),
                                ("heldout", "evaluation", prepared.heldout_path)):
        if part not in prepared.digests or path is None:
            continue
        digest = prepared.digests[part]
        name = f"{prepared.format}-{part}-{digest[:12]}"
        ds = _dataset(Path(path), prepared.uris[part], name, digest, splits.get(part, {}).get("rows", 0))
        mlflow.log_input(ds, context=context, tags={
            "lexforge.sha256": digest,
            "lexforge.sanitized_sha256": prepared.digests["sanitized"],
            "lexforge.source_sha256": prepared.digests["source"],
            "lexforge.format": prepared.format,
        })
    mlflow.log_dict(prepared.report, "data/report.json")
    mlflow.log_dict(lineage, "data/lineage.json")
    mlflow.set_tags({"lexforge.data.sanitized_sha256": prepared.digests["sanitized"],
                     "lexforge.data.train_sha256": prepared.digests["train"]})
    return True
