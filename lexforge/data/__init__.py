"""Data engine: validate, repair and sanitize training data, store it by content digest, record lineage.

- :func:`prepare_dataset` (what training and flows call): sanitize -> token stats -> held-out split ->
  ``datasets/sha256/<digest>/`` in the configured store -> lineage.json.
- :func:`sanitize_file`: the streaming sanitizer on its own (``lexforge data sanitize``).
- :func:`check_data`: the report only (``lexforge data check`` and the API's upload check run it).
- :func:`report_markdown`, :func:`print_report`: render a sanitize report.
- :func:`log_lineage_to_mlflow`: dataset inputs + report/lineage artifacts on the active MLflow run.
- :func:`load_legalbench_task`: LegalBench TSV tasks for eval.

No Prefect imports here; see docs/data.md.
"""

from lexforge.data.formats import DROP_REASONS, FORMATS
from lexforge.data.legalbench import LegalBenchTask, find_legalbench_tasks, load_legalbench_task
from lexforge.data.lineage import log_lineage_to_mlflow
from lexforge.data.prepare import PreparedDataset, prepare_dataset
from lexforge.data.report import print_report, report_markdown
from lexforge.data.sanitize import DataError, SanitizeOptions, SanitizeResult, check_data, sanitize_file
from lexforge.data.store import dataset_key, fetch_dataset

__all__ = [
    "DROP_REASONS", "FORMATS", "DataError", "LegalBenchTask", "PreparedDataset", "SanitizeOptions",
    "SanitizeResult", "check_data", "dataset_key", "fetch_dataset", "find_legalbench_tasks", "load_legalbench_task",
    "log_lineage_to_mlflow", "prepare_dataset", "print_report", "report_markdown", "sanitize_file",
]
