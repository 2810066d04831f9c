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
    from lexforge.data import prepare_dataset, report_markdown

    prepared = prepare_dataset(spec)
    report = prepared.report or {}
    get_run_logger().info("dataset %s: %s", prepared.digests.get("sanitized"), json.dumps(report)[:2000])
    create_markdown_artifact(
        key=artifact_key("dataset-report", spec),
        description=f"sanitize report for {spec.name}",
        markdown=(
            f"# Dataset `{spec.name}` ({prepared.format})\n\n{report_markdown(report)}\n\n## Token stats (train)\n\n"
            + (md_table([prepared.token_stats]) if prepared.token_stats else "_(n/a)_") + "\n\n## Digests\n\n"
            + md_table([{"part": k, "sha256": v, "uri": prepared.uris.get(k, "")} for k, v in prepared.digests.items()])
        ),
    )
    return prepared
