from pathlib import Path

import pytest

from lexforge.config import JobSpec, SpecError, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sft-lora.yaml"


def test_example_spec_loads_and_resolves_paths():
    spec = load_spec(EXAMPLE)
    assert spec.method == "lora" and spec.stage == "sft"
    assert Path(spec.data.train).is_file()
    assert all(Path(s.path).is_dir() for s in spec.eval.suites)


def test_hash_is_stable_and_sensitive():
    a = load_spec(EXAMPLE)
    b = load_spec(EXAMPLE)
    c = load_spec(EXAMPLE, ["hyperparams.learning_rate=1e-5"])
    assert a.spec_hash() == b.spec_hash()
    assert a.spec_hash() != c.spec_hash()
    assert c.hyperparams.learning_rate == 1e-5
    assert a.flat_params()["spec_hash"] == a.spec_hash()


def test_invalid_field_is_named(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec(EXAMPLE, ["hyperparams.learning_rate=-1"])
    assert "hyperparams.learning_rate" in str(e.value)
    with pytest.raises(SpecError) as e:
        load_spec(EXAMPLE, ["hyperparams.lerning_rate=1"])
    assert "hyperparams.lerning_rate" in str(e.value) and "unknown field" in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  train: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "bad.yaml" in str(e.value) and "line" in str(e.value)


@pytest.mark.parametrize(
    "patch,msg",
    [
        ({"method": "qlora", "strategy": "deepspeed-zero3"}, "qlora"),
        ({"stage": "dpo", "data": {"train": "x.jsonl", "format": "chat"}}, "preference"),
        ({"resources": {"accelerator_type": "H100"}}, "gpus_per_worker"),
        ({"checkpoint": {"every_n_steps": None}}, "every_n_minutes"),
        ({"tags": {"api_key": "x"}}, "secret"),
    ],
)
def test_incompatible_options_fail_fast(patch, msg):
    base = {"name": "t", "data": {"train": "x.jsonl"}}
    base.update(patch)
    with pytest.raises(SpecError) as e:
        spec_from_dict(base)
    assert msg in str(e.value)


def test_missing_spec_file():
    with pytest.raises(SpecError, match="not found"):
        load_spec("/nonexistent/spec.yaml")


def test_defaults_round_trip():
    spec = JobSpec(name="rt", data={"train": "a.jsonl"})
    again = spec_from_dict(spec.model_dump(mode="json"))
    assert again.spec_hash() == spec.spec_hash()
