"""Ray job entrypoint: ``python -m lexforge.train.entrypoint SPEC.yaml [--set k=v ...]``.

Submitted by Prefect through ``JobSubmissionClient``; also fine to run by hand. Re-running the same command
resumes from the newest committed checkpoint (same run name + storage), and a completed run returns its result
without training again. The last stdout line is ``LEXFORGE_RESULT {json}``.

Exit codes: 0 completed, 75 preempted (checkpoint committed; re-run to resume), 2 invalid spec/setup, 1 failure.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_PREEMPTED = 75
RESULT_MARKER = "LEXFORGE_RESULT "


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lexforge.train.entrypoint", description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="dotted.key=value override")
    ap.add_argument("--dataset-digest", default=None,
                    help="train on this stored, already prepared train split (sha256) instead of preparing data.train")
    args = ap.parse_args(argv)
    from lexforge.config import SpecError, load_spec
    from lexforge.storage.records import RunResult
    from lexforge.train.checkpoint import CheckpointMismatch
    from lexforge.train.data import DataError
    from lexforge.train.model import SetupError

    try:
        spec = load_spec(args.spec, args.overrides)
        from lexforge.train.run import run_training

        def show(p: dict) -> None:
            print(f"LEXFORGE_PROGRESS {json.dumps(p)}", flush=True)

        result = run_training(spec, on_progress=show, dataset_digest=args.dataset_digest)
    except (SpecError, SetupError, DataError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        print(RESULT_MARKER + RunResult(status="invalid", error=str(e)).model_dump_json(), flush=True)
        return 2
    from lexforge.storage.records import RunRecords
    from lexforge.storage import store_for_spec

    record = RunRecords(store_for_spec(spec), spec.name).read_result()
    if record is None:  # cannot happen after run_training returned; fail loudly rather than invent a result
        print(f"error: run {spec.name} has no result record", file=sys.stderr)
        return 1
    print(RESULT_MARKER + record.model_dump_json(), flush=True)
    return EXIT_PREEMPTED if result.status == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
