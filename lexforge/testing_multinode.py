"""A Ray cluster of several nodes on one machine, for tests and benchmarks (Ray's own multi-node mechanism).

A head and worker nodes are separate ``ray start --block`` processes, each in its own process group, with its
own loopback address (127.0.0.1 for the head, 127.0.0.2, 127.0.0.3, ... for workers: Ray Train derives node and
local ranks from node addresses, so nodes must not share one), resources, temp dir, ports and node-local disk
(``LEXFORGE_NODE_LOCAL_DIR``). Nothing is shared between the
nodes but the store (S3). Losing a node is drilled for real: :meth:`LocalRayCluster.kill_node` SIGKILLs the
node's raylet and every process of it and deletes its local disk; with a notice, its Ray Train workers get
SIGTERM first and the node dies after the grace period (a cloud spot notice, a Kubernetes drain).
Every node runs with the token authentication of the environment (``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN_PATH``), as
the embedded stack does; the harness's own HTTP calls send the token (:mod:`lexforge.ray_auth`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lexforge import ray_auth
from lexforge.procs import bin_path, spawn, stop_group
from lexforge.testing import free_ports

#: Fast failure detection for drills: the GCS declares a node dead after ~3 s without health checks.
HEAD_ENV = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    local_dir: Path
    log: Path
    head: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalRayCluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)  # extra env of every node (e.g. S3 endpoint, auth)
    nodes: dict[str, Node] = field(default_factory=dict)
    next_ip: int = 2
    gcs_address: str = ""
    dashboard_url: str = ""
    _used_ports: set[int] = field(default_factory=set)  # every node's ports differ from every other's

    def _ports(self) -> list[str]:
        names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")
        ports = free_ports(len(names), avoid=self._used_ports)  # distinct, and not another node's
        self._used_ports.update(ports)
        return [x for k, v in zip(names, ports) for x in (k, str(v))]

    def _node_dirs(self, name: str) -> tuple[Path, Path]:
        # Ray's socket paths must stay short: temp dirs live under /tmp, not under pytest's long tmp paths
        temp = Path(tempfile.mkdtemp(prefix=f"rn{name[:6]}", dir="/tmp"))
        local = self.root / "nodes" / name / "local"
        local.mkdir(parents=True, exist_ok=True)
        return temp, local

    def start_head(self, num_cpus: int = 0, timeout: float = 180.0) -> None:
        from lexforge.procs import wait_http

        temp, local = self._node_dirs("head")
        gcs, dash, client = free_ports(3, avoid=self._used_ports)
        self._used_ports.update((gcs, dash, client))
        log = self.root / "head.log"
        cmd = [bin_path("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
               "--ray-client-server-port", str(client), "--num-cpus", str(num_cpus), "--disable-usage-stats",
               "--temp-dir", str(temp), *self._ports()]
        proc = spawn(cmd, log, env={**HEAD_ENV, **self.env, "LEXFORGE_NODE_LOCAL_DIR": str(local)})
        self.nodes["head"] = Node("head", proc, temp, local, log, head=True)
        self.gcs_address, self.dashboard_url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        wait_http(f"{self.dashboard_url}/api/version", timeout=timeout, proc=proc, log_path=log,
                  headers=ray_auth.http_headers(self.dashboard_url))

    def add_node(self, name: str, num_cpus: int = 2, resources: dict[str, float] | None = None,
                 timeout: float = 120.0) -> Node:
        import json

        temp, local = self._node_dirs(name)
        log = self.root / f"{name}.log"
        ip, self.next_ip = f"127.0.0.{self.next_ip}", self.next_ip + 1
        cmd = [bin_path("ray"), "start", "--block", "--address", self.gcs_address, "--node-ip-address", ip,
               "--num-cpus", str(num_cpus), "--temp-dir", str(temp), "--disable-usage-stats", *self._ports()]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        proc = spawn(cmd, log, env={**self.env, "LEXFORGE_NODE_LOCAL_DIR": str(local)})
        node = self.nodes[name] = Node(name, proc, temp, local, log)
        self.wait_for_nodes(len(self.alive_nodes()), timeout, starting=node)  # the head is one of them
        return node

    def alive_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive]

    def wait_for_nodes(self, count: int, timeout: float = 120.0, starting: Node | None = None) -> None:
        """Until Ray's own view has ``count`` alive nodes (the head is one of them). A ``starting`` node whose
        ``ray start`` exits meanwhile fails at once, with the end of its log."""
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if starting is not None and not starting.alive:
                tail = starting.log.read_text(errors="replace")[-2000:] if starting.log.is_file() else ""
                raise RuntimeError(f"node {starting.name} exited while joining the cluster "
                                   f"(rc={starting.proc.returncode}); {starting.log}:\n{tail}")
            req = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary",
                                         headers=ray_auth.http_headers(self.dashboard_url))
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    summary = json.loads(r.read())["data"]["summary"]
                if sum(1 for n in summary if n.get("raylet", {}).get("state") == "ALIVE") >= count:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Ray cluster did not reach {count} alive nodes in {timeout:.0f}s")

    def node_processes(self, name: str) -> list:
        """Every process of a node: its `ray start` process and all descendants (raylet, workers, agents)."""
        import psutil

        try:
            root = psutil.Process(self.nodes[name].proc.pid)
        except psutil.NoSuchProcess:
            return []
        return [root, *root.children(recursive=True)]

    def train_workers(self, name: str) -> list:
        out = []
        for p in self.node_processes(name):
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    out.append(p)
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
        return out

    def kill_node(self, name: str, notice_s: float | None = None) -> float:
        """Lose a whole node: without notice SIGKILL its raylet and every process of it; with a notice SIGTERM its
        Ray Train workers first and kill the node ``notice_s`` later. Its local disk is deleted. Returns the
        time (monotonic) the node died."""
        node = self.nodes[name]
        if notice_s is not None:
            for p in self.train_workers(name):
                try:
                    p.send_signal(signal.SIGTERM)
                except Exception:  # noqa: BLE001
                    pass
            time.sleep(notice_s)
        procs = self.node_processes(name)
        for p in procs:
            try:
                p.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        try:
            os.killpg(os.getpgid(node.proc.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        node.proc.wait(timeout=30)
        died = time.monotonic()
        shutil.rmtree(node.local_dir, ignore_errors=True)
        return died

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            if node.alive:
                stop_group(node.proc.pid)
            for p in self.node_processes(node.name):
                try:
                    p.kill()
                except Exception:  # noqa: BLE001
                    pass
            shutil.rmtree(node.temp_dir, ignore_errors=True)
