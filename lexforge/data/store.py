"""Content-addressed dataset storage: ``datasets/sha256/<digest>/data.jsonl`` (+ report.json, lineage.json).

Objects are immutable: an existing key is never overwritten (the same digest means the same bytes), so
concurrent or repeated runs are harmless and a digest found in lineage always resolves to the data it names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

from lexforge.storage import Store, open_store
from lexforge.storage.layout import DatasetLayout


def dataset_key(digest: str, name: str = "data.jsonl") -> str:
    return DatasetLayout(digest).file(name)


def put_immutable_file(store: Store, key: str, path: Path) -> tuple[str, bool]:
    """Upload unless present; returns (uri, already_there)."""
    if store.exists(key):
        return store.url(key), True
    return store.put_file(key, path), False


def put_immutable_json(store: Store, key: str, obj: dict) -> tuple[str, bool]:
    if store.exists(key):
        return store.url(key), True
    return store.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()), False


def store_dataset(store: Store, digest: str, path: Path) -> tuple[str, bool]:
    return put_immutable_file(store, dataset_key(digest), path)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def fetch_dataset(store: Store, digest: str, dest: Path) -> Path:
    """Download a stored dataset and verify that its bytes still hash to ``digest``."""
    dest = Path(dest)
    store.get_file(dataset_key(digest), dest)
    got = file_sha256(dest)
    if got != digest:
        dest.unlink(missing_ok=True)
        raise ValueError(f"{store.url(dataset_key(digest))} is corrupted: its sha256 is {got}, expected {digest}")
    return dest


def fetch_source(uri: str, work_dir: Path, endpoint_url: str | None = None) -> Path:
    """A local path for ``uri`` (a path, file:// or s3://bucket/key; S3 objects are downloaded into work_dir)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise ValueError(f"S3 data URI {uri!r} must look like s3://bucket/path/file.jsonl")
        store = open_store(f"s3://{parsed.netloc}", endpoint_url=endpoint_url, create_bucket=False)
        dest = Path(work_dir) / "source" / Path(key).name
        try:
            return store.get_file(key, dest)
        except FileNotFoundError:
            raise FileNotFoundError(f"training data {uri} not found") from None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported data URI {uri!r}: use a local path, file:// or s3://")
    return Path(uri).expanduser()
