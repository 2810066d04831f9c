"""The store layout: the one place that knows every key lexforge reads or writes (pure: no I/O).

Everything lives under one store (``storage.root``: a local directory or ``s3://bucket/prefix``)::

    runs/<run>/checkpoints/step_00000042/...    sharded checkpoint files
    runs/<run>/checkpoints/step_00000042/manifest.json
                                                written LAST: its presence (and intact files) = committed
    runs/<run>/progress.json                    latest progress (Progress record)
    runs/<run>/result.json                      the run's outcome (RunResult record)
    runs/<run>/output/...                       final adapter / weights + lineage.json (written last)
    runs/<run>/control/stop.json                stop request: checkpoint at the next step and exit
    runs/<run>/control/epoch.json               the current writer's epoch (fencing of older attempts)
    runs/<run>/preflight/<node>.probe           a node's storage round trip (written, read back, deleted)
    runs/<run>/eval/<label>.json                evaluation reports
    runs/<run>/registered.json                  the model registry version the run's output became
    runs/<run>/checkpoint-choice.json           which committed checkpoint was registered, and why
    datasets/sha256/<digest>/data.jsonl         content-addressed dataset (+ report.json, lineage.json)
    eval-cache/<key>.json                       cached evaluation reports (e.g. of a base model)
    api/files/<file id>.jsonl                   fine-tuning API uploads
    api/jobs/<job id>/spec.yaml                 the job spec an API job runs with
    api/results/<job id>/<file id>.csv          API result files

Writers and readers of the records in these keys share :mod:`lexforge.storage.records`.
"""

from __future__ import annotations

import re

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _check(value: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not valid (allowed: {pattern.pattern})")
    return value


class RunLayout:
    """Keys of one run (``spec.name``)."""

    def __init__(self, run_name: str):
        self.run = _check(run_name, RUN_NAME, "run name")
        self.root = f"runs/{self.run}"

    def __repr__(self) -> str:
        return f"RunLayout({self.run!r})"

    # ---- checkpoints -------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> str:
        return f"{self.root}/checkpoints"

    @staticmethod
    def step_dir_name(step: int) -> str:
        """The folder name of step ``step``, also used for local staging copies."""
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        return f"step_{step:08d}"

    def checkpoint_dir(self, step: int) -> str:
        return f"{self.checkpoints}/{self.step_dir_name(step)}"

    def checkpoint_file(self, step: int, rel: str) -> str:
        return f"{self.checkpoint_dir(step)}/{rel}"

    def manifest(self, step: int) -> str:
        return self.checkpoint_file(step, MANIFEST_NAME)

    def step_of(self, key: str) -> int | None:
        """The step of a key inside one of this run's checkpoint folders (None for any other key).
        The only parser of step folder names."""
        prefix = self.checkpoints + "/"
        if not key.startswith(prefix):
            return None
        head = key[len(prefix):].split("/", 1)[0]
        m = _STEP_DIR.match(head)
        return int(m.group(1)) if m else None

    def checkpoint_rel(self, key: str) -> str | None:
        """The path of ``key`` relative to its checkpoint folder (None outside checkpoint folders)."""
        step = self.step_of(key)
        if step is None:
            return None
        rest = key[len(self.checkpoint_dir(step)):]
        return rest[1:] if rest.startswith("/") and len(rest) > 1 else None

    # ---- run records -------------------------------------------------------------------------------------------
    @property
    def progress(self) -> str:
        return f"{self.root}/progress.json"

    @property
    def result(self) -> str:
        return f"{self.root}/result.json"

    @property
    def output(self) -> str:
        """Prefix of the final output folder (no trailing slash)."""
        return f"{self.root}/output"

    def output_file(self, rel: str) -> str:
        return f"{self.output}/{rel}"

    @property
    def output_lineage(self) -> str:
        return self.output_file(OUTPUT_LINEAGE_NAME)

    @property
    def registration(self) -> str:
        return f"{self.root}/registered.json"

    @property
    def checkpoint_choice(self) -> str:
        return f"{self.root}/checkpoint-choice.json"

    @property
    def stop_request(self) -> str:
        return f"{self.root}/control/stop.json"

    @property
    def epoch(self) -> str:
        return f"{self.root}/control/epoch.json"

    def preflight_probe(self, node: str) -> str:
        return f"{self.root}/preflight/{_check(node, _ID, 'node id')}.probe"

    # ---- evaluation ----------------------------------------------------------------------------------------------
    @property
    def eval_reports(self) -> str:
        return f"{self.root}/eval"

    def eval_report(self, label: str) -> str:
        return f"{self.eval_reports}/{_check(label, _LABEL, 'eval label')}.json"

    def eval_label_of(self, key: str) -> str | None:
        prefix = self.eval_reports + "/"
        if key.startswith(prefix) and key.endswith(".json") and "/" not in key[len(prefix):]:
            return key[len(prefix):-len(".json")]
        return None


MANIFEST_NAME = "manifest.json"
OUTPUT_LINEAGE_NAME = "lineage.json"


class DatasetLayout:
    """Keys of a content-addressed dataset: ``datasets/sha256/<digest>/...`` (immutable objects)."""

    ROOT = "datasets/sha256"

    def __init__(self, digest: str):
        self.digest = _check(digest, _DIGEST, "dataset digest (sha256 hex)")
        self.root = f"{self.ROOT}/{self.digest}"

    @property
    def data(self) -> str:
        return f"{self.root}/data.jsonl"

    @property
    def report(self) -> str:
        return f"{self.root}/report.json"

    @property
    def lineage(self) -> str:
        return f"{self.root}/lineage.json"

    def file(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise ValueError(f"dataset object name {name!r} must be a plain file name")
        return f"{self.root}/{name}"


def eval_cache(key: str) -> str:
    """A cached evaluation report (e.g. of a base model, keyed by what determines its scores)."""
    return f"eval-cache/{_check(key, _ID, 'eval cache key')}.json"


class ApiLayout:
    """Keys of the fine-tuning API's objects."""

    @staticmethod
    def uploaded_file(file_id: str) -> str:
        return f"api/files/{_check(file_id, _ID, 'file id')}.jsonl"

    @staticmethod
    def job_spec(job_id: str) -> str:
        return f"api/jobs/{_check(job_id, _ID, 'job id')}/spec.yaml"

    @staticmethod
    def result_file(job_id: str, file_id: str) -> str:
        return f"api/results/{_check(job_id, _ID, 'job id')}/{_check(file_id, _ID, 'file id')}.csv"
