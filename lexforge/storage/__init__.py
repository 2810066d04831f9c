"""Object storage behind one small interface: a local directory or S3 (boto3; MinIO/moto via endpoint_url).

``open_store("s3://bucket/prefix", endpoint_url=...)`` or ``open_store("/abs/dir")`` returns a :class:`Store`
whose keys are ``/``-separated relative paths. Which keys exist and what they hold is
:mod:`lexforge.storage.layout` and :mod:`lexforge.storage.records`. Credentials come from the standard AWS env vars / profiles,
never from the job spec, and are never logged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse


class Store(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: str | Path) -> str: ...
    def get_file(self, key: str, path: str | Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def url(self, key: str) -> str: ...
    def size(self, key: str) -> int | None: ...
    def local_path(self, key: str) -> Path | None: ...


def _clean_key(key: str) -> str:
    key = key.replace("\\", "/").lstrip("/")
    if any(part == ".." for part in key.split("/")):
        raise ValueError(f"storage key {key!r} may not contain '..'")
    return key


@dataclass
class LocalStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)  # atomic publish
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        if not p.is_file():
            raise FileNotFoundError(f"{self.url(key)} not found")
        return p.read_bytes()

    def put_file(self, key: str, path: str | Path) -> str:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return self.url(key)

    def get_file(self, key: str, path: str | Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.url(key)} not found")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [_clean_key(prefix)]
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        p = self._path(prefix)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()

    def url(self, key: str) -> str:
        return str(self._path(key))

    def size(self, key: str) -> int | None:
        p = self._path(key)
        return p.stat().st_size if p.is_file() else None

    def local_path(self, key: str) -> Path | None:
        """Local stores hand out paths directly (no copy)."""
        return self._path(key)


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, create_bucket: bool = False):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("LEXFORGE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url)
        if create_bucket:
            from botocore.exceptions import ClientError

            try:
                self.client.head_bucket(Bucket=bucket)
            except ClientError:
                self.client.create_bucket(Bucket=bucket)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.url(key)} not found") from None
            raise

    def put_file(self, key: str, path: str | Path) -> str:
        self.client.upload_file(str(path), self.bucket, self._key(key))
        return self.url(key)

    def get_file(self, key: str, path: str | Path) -> Path:
        from botocore.exceptions import ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.url(key)} not found") from None
            raise
        return path

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return bool(self.list(key + "/"))

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                out.append(k[len(self.prefix) + 1 :] if self.prefix else k)
        return sorted(out)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix.rstrip("/") + "/")
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in keys[i : i + 1000]]}
            )

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError:
            return None

    def local_path(self, key: str) -> Path | None:
        """Objects in S3 have no local path: callers copy them (``get_file``)."""
        return None

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        yield from self.list(prefix)


def open_store(uri: str, endpoint_url: str | None = None, create_bucket: bool = True) -> Store:
    """Open a store from ``/path``, ``file:///path`` or ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket; use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, create_bucket=create_bucket)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path if parsed.scheme == "file" else uri))
    raise ValueError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")


def store_for_spec(spec) -> Store:
    """The store configured in a :class:`lexforge.config.JobSpec`."""
    return open_store(spec.storage.resolved_root(), endpoint_url=spec.storage.s3_endpoint_url)
