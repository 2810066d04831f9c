"""Preflight checks on node reports. The CPU node is this machine's real probe; GPU / InfiniBand nodes cannot be
had here, so they are SYNTHETIC: this machine's real report with the GPU, IB and NCCL fields replaced (what the
probe reports on an H100 node). The real fan-out over a multi-node Ray cluster is in tests/test_multinode.py."""

from __future__ import annotations

import copy

import pytest

from lexforge.config import spec_from_dict
from lexforge.preflight import check_nodes


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    from lexforge.preflight.probe import probe_node

    spec = spec_from_dict({"name": "pf", "data": {"train": "x"},
                           "storage": {"root": str(tmp_path_factory.mktemp("pfstore"))}})
    rep = probe_node(spec.model_dump(mode="json"), "node-a")
    rep["resources"] = {"CPU": 8.0, "memory": 16 * 2**30}
    return rep


def _spec(**sets):
    return spec_from_dict({"name": "pf", "data": {"train": "x"}}, "t", [f"{k}={v}" for k, v in sets.items()])


def _gpu_node(base, node, *, gpus=8, name="NVIDIA H100 80GB HBM3", ib=("mlx5_0",), env=None, ifaces=("eth0", "ib0")):
    r = copy.deepcopy(base)
    r.update(node=node, gpus=[{"name": name, "memory_gb": 79.6}] * gpus, ib_devices=list(ib),
             nccl_env=dict(env or {}), interfaces=list(ifaces))
    r["resources"] = {"CPU": 96.0, "GPU": float(gpus)}
    return r


def _failed(report):
    return {(c.check, c.node) for c in report.failed()}


def test_real_probe_of_this_node_passes_a_cpu_job(cpu_report):
    assert cpu_report["storage"]["ok"] and cpu_report["versions"]["code_digest"]
    rep = check_nodes(_spec(**{"resources.num_workers": 2}), [cpu_report, {**cpu_report, "node": "node-b"}],
                      memory_per_worker_gb=1.0)
    assert rep.ok, rep.to_markdown()
    assert "all checks passed" in rep.to_markdown()


def test_mismatched_code_unreachable_node_and_broken_storage_each_name_a_fix(cpu_report):
    other = copy.deepcopy(cpu_report)
    other.update(node="node-b")
    other["versions"]["code_digest"] = "0123456789abcdef"
    other["versions"]["torch"] = "2.12.0"
    other["storage"] = {"ok": False, "uri": "", "seconds": 0.1, "error": "AccessDenied: no credentials"}
    rep = check_nodes(_spec(), [cpu_report, other], unreachable={"node-c": "no answer within 90s"})
    failed = _failed(rep)
    assert {("same code_digest", "cluster"), ("same torch", "cluster"), ("storage round trip", "node-b"),
            ("reachable", "node-c")} <= failed
    assert all(c.fix for c in rep.failed())
    assert not rep.ok


def test_capacity_counts_worker_slots_of_the_requested_accelerator(cpu_report):
    spec = _spec(**{"resources.num_workers": 16, "resources.gpus_per_worker": 1, "resources.accelerator_type": "H100",
                    "resources.cpus_per_worker": 8})
    env = {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5_0"}
    h100 = [_gpu_node(cpu_report, f"gpu-{i}", env=env) for i in range(2)]
    assert check_nodes(spec, h100, memory_per_worker_gb=60).ok
    a100 = [_gpu_node(cpu_report, "gpu-0", env=env), _gpu_node(cpu_report, "gpu-1", name="NVIDIA A100-SXM4-40GB",
                                                               env=env)]
    rep = check_nodes(spec, a100, memory_per_worker_gb=60)
    cap = next(c for c in rep.checks if c.check == "capacity")
    assert not cap.ok and "8 worker slot(s)" in cap.detail and "need 16" in cap.detail
    small = check_nodes(spec, h100, memory_per_worker_gb=120)
    assert ("GPU memory", "gpu-0") in _failed(small)


def test_nccl_and_infiniband_hints_on_multi_node_gpu_jobs(cpu_report):
    spec = _spec(**{"resources.num_workers": 2, "resources.gpus_per_worker": 1})
    no_ifname = _gpu_node(cpu_report, "gpu-0", env={})
    ib_off = _gpu_node(cpu_report, "gpu-1", env={"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": "1"})
    no_ib = _gpu_node(cpu_report, "gpu-2", ib=(), env={"NCCL_SOCKET_IFNAME": "bond9"})
    rep = check_nodes(spec, [no_ifname, ib_off, no_ib])
    failed = _failed(rep)
    assert ("NCCL_SOCKET_IFNAME", "gpu-0") in failed
    ib_check = next(c for c in rep.failed() if (c.check, c.node) == ("InfiniBand", "gpu-1"))
    assert "unset NCCL_IB_DISABLE" in ib_check.fix
    assert ("InfiniBand", "gpu-2") in failed and ("NCCL_SOCKET_IFNAME", "gpu-2") in failed  # bond9 is not up there
    assert ("NCCL_SOCKET_IFNAME", "gpu-1") not in failed
    one_node = check_nodes(spec, [_gpu_node(cpu_report, "gpu-0", env={})])
    assert not any(c.check == "InfiniBand" for c in one_node.checks)  # a single node needs no fabric
