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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lexforge.train.entrypoint", description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--set", "-s", dest="overrides", action="append", default=[], help="dotted.key=value override")
    args = ap.parse_args(argv)
    from lexforge.config import SpecError, load_spec
    from lexforge.train.checkpoint import CheckpointMismatch
    from lexforge.train.data import DataError
    from lexforge.train.model import SetupError

    try:
        spec = load_spec(args.spec, args.overrides)
        from lexforge.train.run import run_training

        def show(p: dict) -> None:
            print(f"LEXFORGE_PROGRESS {json.dumps(p)}", flush=True)

        result = run_training(spec, on_progress=show)
    except (SpecError, SetupError, DataError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        print("LEXFORGE_RESULT " + json.dumps({"status": "invalid", "error": str(e)}), flush=True)
        return 2
    print("LEXFORGE_RESULT " + json.dumps(result.to_dict(), default=str), flush=True)
    return EXIT_PREEMPTED if result.status == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main())
