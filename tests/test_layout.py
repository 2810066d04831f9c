"""Layout rules from DEVELOPERS.md that code review alone would let slip."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_engine_never_imports_prefect():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "lexforge").rglob("*.py") if "prefect" in _imports(p)]
    assert not offenders, f"lexforge/ is the engine and must not import prefect: {offenders}"


def test_tasks_and_flows_are_prefect_side():
    for d in ("flows", "tasks"):
        files = [p for p in (ROOT / d).glob("*.py") if p.name != "__init__.py"]
        assert files, d
        assert any("prefect" in _imports(p) for p in files), f"{d}/ should hold the Prefect wrappers"


def test_layout_exists():
    for d in ("lexforge/data", "lexforge/train", "lexforge/evaluate", "lexforge/registry", "lexforge/serve",
              "lexforge/plan", "lexforge/storage", "lexforge/api", "flows", "tasks", "deployments", "infra",
              "docker", "docs", "tests", "bench"):
        assert (ROOT / d).is_dir(), d
    for f in ("pyproject.toml", "lexforge/cli.py", "lexforge/config.py", "README.md", ".ci/run"):
        assert (ROOT / f).is_file(), f


def test_make_targets_only_call_files_that_exist():
    import re

    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:scripts|bench|infra/local)/[\w./-]+\.(?:sh|py))\b", make))
    assert paths, "the Makefile calls no scripts? the scanner is broken"
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"Makefile calls files that do not exist: {missing}"


def test_bench_script_runs_every_benchmark():
    script = (ROOT / "scripts" / "bench.sh").read_text(encoding="utf-8")
    for b in sorted((ROOT / "bench").glob("bench_*.py")):
        assert f"bench/{b.name}" in script, f"make bench skips {b.name}"
