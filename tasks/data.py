"""sanitize: prepare (validate, repair, dedupe, split, tokenize-check) the training data."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key, md_table


@task(name="sanitize", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def sanitize(spec: JobSpec):
    from lexforge.data import prepare_dataset

    prepared = prepare_dataset(spec)
    report = prepared.report or {}
    get_run_logger().info("dataset %s: %s", prepared.digests.get("sanitized"), json.dumps(report)[:2000])
    counts = [{"what": k, "value": v} for k, v in report.items() if not isinstance(v, (dict, list))]
    dropped = report.get("dropped") or report.get("dropped_by_reason") or {}
    create_markdown_artifact(
        key=artifact_key("dataset-report", spec),
        description=f"sanitize report for {spec.name}",
        markdown=(
            f"# Dataset report `{spec.name}`\n\nformat: **{prepared.format}**\n\n"
            f"{md_table(counts)}\n\n## Dropped rows by reason\n\n"
            f"```json\n{json.dumps(dropped, indent=2)[:6000]}\n```\n\n## Token stats\n\n"
            f"{md_table([prepared.token_stats]) if prepared.token_stats else '_(n/a)_'}\n\n## Digests\n\n"
            + md_table([{"part": k, "sha256": v, "uri": prepared.uris.get(k, "")} for k, v in prepared.digests.items()])
        ),
    )
    return prepared
