"""What one node reports about itself (runs on the node: a Ray task pinned there)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import time
import uuid
from pathlib import Path
from typing import Any

#: Environment a multi-node GPU job depends on; reported (values only for these names, never other env vars).
NCCL_VARS = ("NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "NCCL_NET_GDR_LEVEL",
             "NCCL_P2P_DISABLE", "NCCL_NVLS_ENABLE", "NCCL_DEBUG", "NCCL_CROSS_NIC", "GLOO_SOCKET_IFNAME",
             "TORCH_NCCL_ASYNC_ERROR_HANDLING")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the lexforge package's Python sources (path + content): equal on two nodes = same code."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "code_digest": code_digest()}
    for pkg in ("lexforge", "torch", "ray", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return out


def _ib_devices() -> list[str]:
    d = Path("/sys/class/infiniband")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _interfaces() -> list[str]:
    import psutil

    return sorted(name for name, st in psutil.net_if_stats().items() if st.isup)


def _storage_round_trip(spec, node: str) -> dict[str, Any]:
    """Write, read back and delete a small object under the run's preflight key: a real round trip."""
    from lexforge.storage import store_for_spec
    from lexforge.storage.layout import RunLayout

    t0 = time.perf_counter()
    key = RunLayout(spec.name).preflight_probe(node)
    payload = uuid.uuid4().hex.encode()
    try:
        store = store_for_spec(spec)
        store.put_bytes(key, payload)
        ok = store.get_bytes(key) == payload
        store.delete(key)
        return {"ok": ok, "uri": store.url(key), "seconds": round(time.perf_counter() - t0, 3),
                "error": None if ok else "read back other bytes than written"}
    except Exception as e:  # noqa: BLE001 - the report says what failed
        return {"ok": False, "uri": "", "seconds": round(time.perf_counter() - t0, 3),
                "error": f"{type(e).__name__}: {e}"}


def probe_node(spec_dict: dict, node: str) -> dict[str, Any]:
    """This node's report (see :class:`lexforge.preflight.checks.NodeReport`)."""
    import psutil

    from lexforge.config import spec_from_dict

    spec = spec_from_dict(spec_dict, "preflight")
    return {
        "node": node, "hostname": socket.gethostname(), "versions": _versions(),
        "cpus": os.cpu_count() or 0, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": _gpus(), "ib_devices": _ib_devices(), "interfaces": _interfaces(),
        "nccl_env": {k: os.environ[k] for k in NCCL_VARS if k in os.environ},
        "storage": _storage_round_trip(spec, node),
    }
