"""Content-addressed dataset storage on a real S3 API (moto_server): digests, immutability, S3 sources, lineage."""

from __future__ import annotations

import hashlib
import json
import uuid

import boto3
import pytest

from lexforge.config import spec_from_dict
from lexforge.data import DataError, prepare_dataset
from lexforge.data.store import dataset_key, fetch_dataset
from lexforge.samples import sample_path
from lexforge.storage import open_store


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def bucket(moto_s3):
    name = f"lexforge-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=name)
    return name


def _spec(train: str, bucket: str, endpoint: str, **data):
    return spec_from_dict({"name": "s3-data", "stage": "dpo" if data.get("format") == "preference" else "sft",
                           "data": {"train": train, **data},
                           "storage": {"root": f"s3://{bucket}/lexforge", "s3_endpoint_url": endpoint}})


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_prepare_stores_by_digest_on_s3_immutably(tmp_path, tok, moto_s3, bucket):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    spec = _spec(str(sample_path("legal_qa.jsonl")), bucket, moto_s3)
    p = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w1")
    for part in ("sanitized", "train", "heldout"):
        key = f"lexforge/{dataset_key(p.digests[part])}"
        assert p.uris[part] == f"s3://{bucket}/{key}"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert _sha(body) == p.digests[part]
    assert _sha(p.train_path.read_bytes()) == p.digests["train"]
    lineage = json.loads(s3.get_object(Bucket=bucket,
                                       Key=f"lexforge/{dataset_key(p.digests['sanitized'], 'lineage.json')}")["Body"].read())
    assert lineage["splits"]["train"]["uri"] == p.uris["train"] and lineage["source"]["sha256"] == p.digests["source"]
    report = json.loads(s3.get_object(Bucket=bucket,
                                      Key=f"lexforge/{dataset_key(p.digests['sanitized'], 'report.json')}")["Body"].read())
    assert report["kept"] == 159 and report["dropped_total"] == 9

    key = f"lexforge/{dataset_key(p.digests['train'])}"
    before = s3.head_object(Bucket=bucket, Key=key)
    p2 = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w2")
    after = s3.head_object(Bucket=bucket, Key=key)
    assert p2.digests == p.digests and all(p2.lineage["reused"].values())
    assert after["LastModified"] == before["LastModified"] and after["ETag"] == before["ETag"]
    from lexforge.storage.layout import DatasetLayout

    listed = open_store(f"s3://{bucket}/lexforge", endpoint_url=moto_s3).list(DatasetLayout.ROOT + "/")
    assert len([k for k in listed if k.endswith("/data.jsonl")]) == 3

    store = open_store(f"s3://{bucket}/lexforge", endpoint_url=moto_s3)
    got = fetch_dataset(store, p.digests["heldout"], tmp_path / "heldout.jsonl")
    assert got.read_bytes() == p.heldout_path.read_bytes()
    s3.put_object(Bucket=bucket, Key=f"lexforge/{dataset_key(p.digests['heldout'])}", Body=b"tampered\n")
    with pytest.raises(ValueError, match="corrupted"):
        fetch_dataset(store, p.digests["heldout"], tmp_path / "again.jsonl")


def test_source_read_from_s3_uri(tmp_path, tok, moto_s3, bucket):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    raw = sample_path("legal_pref.jsonl").read_bytes()
    s3.put_object(Bucket=bucket, Key="raw/exports/pref.jsonl", Body=raw)
    spec = _spec(f"s3://{bucket}/raw/exports/pref.jsonl", bucket, moto_s3, format="preference")
    p = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w")
    assert p.format == "preference" and p.digests["source"] == _sha(raw)
    assert p.uris["source"] == f"s3://{bucket}/raw/exports/pref.jsonl"
    assert p.lineage["source"]["uri"] == p.uris["source"] and p.report["kept"] == 62
    missing = _spec(f"s3://{bucket}/raw/nope.jsonl", bucket, moto_s3)
    with pytest.raises((FileNotFoundError, DataError), match="not found"):
        prepare_dataset(missing, tokenizer=tok, work_dir=tmp_path / "w2")


def test_cli_check_reads_s3_uri(moto_s3, bucket):
    import typer
    from typer.testing import CliRunner

    from lexforge.data.cli import register

    boto3.client("s3", endpoint_url=moto_s3).put_object(Bucket=bucket, Key="exports/qa.jsonl",
                                                        Body=sample_path("legal_qa.jsonl").read_bytes())
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    r = CliRunner().invoke(app, ["data", "check", f"s3://{bucket}/exports/qa.jsonl", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["total"], rep["kept"], rep["dropped_total"]) == (168, 159, 9)
    r = CliRunner().invoke(app, ["data", "check", f"s3://{bucket}/exports/missing.jsonl"])
    assert r.exit_code == 1 and "not found" in r.output
