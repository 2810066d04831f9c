"""Layout rules from DEVELOPERS.md that code review alone would let slip."""

import ast
import re
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


def test_tasks_flows_and_api_are_prefect_side():
    for d in ("flows", "tasks", "api"):
        files = [p for p in (ROOT / d).glob("*.py") if p.name != "__init__.py"]
        assert files, d
        assert any("prefect" in _imports(p) for p in files), f"{d}/ should hold the Prefect wrappers"


def test_layout_exists():
    for d in ("lexforge/data", "lexforge/train", "lexforge/evaluate", "lexforge/registry", "lexforge/serve",
              "lexforge/plan", "lexforge/storage", "api", "flows", "tasks", "deployments", "infra",
              "docker", "docs", "tests", "bench"):
        assert (ROOT / d).is_dir(), d
    for f in ("pyproject.toml", "lexforge/cli.py", "lexforge/config.py", "README.md", ".ci/run"):
        assert (ROOT / f).is_file(), f


def test_engine_cli_does_not_reach_into_the_control_plane():
    """lexforge/cli.py gets flows/ and api/ commands from the entry point group, never by importing them."""
    src = (ROOT / "lexforge" / "cli.py").read_text(encoding="utf-8")
    assert not {"flows", "api", "tasks"} & _imports(ROOT / "lexforge" / "cli.py")
    assert '"flows.' not in src and '"api.' not in src
    toml = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points."lexforge.commands"]' in toml
    assert 'orchestration = "flows.cli:register"' in toml and 'api = "api.cli:register"' in toml


# One owner per fact: only lexforge/storage/layout.py knows the store layout.
_LAYOUT_OWNER = ROOT / "lexforge" / "storage" / "layout.py"
_LAYOUT_OWNER_TEST = ROOT / "tests" / "test_records.py"  # the owner's own tests spell its keys out
_LAYOUT_LEAKS = {
    "formats a runs/... or datasets/... store key": re.compile(r"""f?["'](runs|datasets/sha256|api/(files|jobs|results))/"""),
    "joins a 'runs' path segment": re.compile(r"""/\s*["']runs["']\s*/"""),
    "knows the step folder name": re.compile(r"""step_(\{|\(\\d|\d{8})|["']step_["']"""),
    "tests for a local store by attribute": re.compile(r"""(hasattr|getattr)\([^)]*["']local_path["']"""),
}


def test_only_the_layout_module_knows_store_keys():
    offenders = []
    for d in ("lexforge", "flows", "tasks", "api", "bench", "tests"):
        for p in (ROOT / d).rglob("*.py"):
            if p in (_LAYOUT_OWNER, _LAYOUT_OWNER_TEST, Path(__file__)):
                continue
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                for what, rx in _LAYOUT_LEAKS.items():
                    if rx.search(line):
                        offenders.append(f"{p.relative_to(ROOT)}:{i} {what}: {line.strip()[:100]}")
    assert not offenders, "use lexforge.storage.layout / records instead:\n" + "\n".join(offenders)


def test_make_targets_only_call_files_that_exist():
    import re

    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:scripts|bench|infra/local)/[\w./-]+\.(?:sh|py))\b", make))
    assert paths, "the Makefile calls no scripts? the scanner is broken"
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"Makefile calls files that do not exist: {missing}"


def test_bench_script_runs_every_benchmark():
    """`make bench` (CPU) runs every benchmark except the GPU one, which bench/gpu.sh runs on a GPU node."""
    script = (ROOT / "scripts" / "bench.sh").read_text(encoding="utf-8")
    gpu = (ROOT / "bench" / "gpu.sh").read_text(encoding="utf-8")
    assert "bench/bench_gpu.py" in gpu
    for b in sorted((ROOT / "bench").glob("bench_*.py")):
        if b.name != "bench_gpu.py":
            assert f"bench/{b.name}" in script, f"make bench skips {b.name}"
