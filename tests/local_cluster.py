"""A real multi-node Ray cluster and a real S3 server on loopback, for the cluster tests.

:class:`LocalCluster` runs ``ray start --head --block`` and ``ray start --address ... --block``
as separate process groups (one raylet each, its own custom resource so that placement across
nodes can be forced), with the dashboard and Jobs server on 127.0.0.1. Stopping a node kills
its process group only: ``ray stop`` would kill every Ray process of the machine, including
the test session's own instance.

:class:`S3Server` is moto's server mode (the S3 protocol over HTTP on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, what: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s`` (a bound, not a
    timing assumption: on a fast machine this returns at the first success)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def cluster_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the Ray processes: this venv first on PATH (a job's ``python`` is looked
    up there), no inherited RAY_ADDRESS, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the node's whole process group (raylet, workers, its ``ray start``)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)


@dataclass
class LocalCluster:
    """Head (0 CPUs for tasks, resource ``head``) + worker nodes (resource ``node<i>``)."""

    root: Path
    env: dict[str, str] = field(default_factory=cluster_env)
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    object_store_bytes: int = 120 * 1024**2
    #: Ray's session dir holds AF_UNIX sockets (paths <= 107 bytes): keep it short
    ray_tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lc-", dir="/tmp"))

    #: Ray rewrites 127.0.0.1/localhost into the machine's outward address (it assumes a
    #: multi-node cluster); other loopback addresses (all of 127.0.0.0/8 is on ``lo``) are
    #: taken as given, so each node gets its own 127.0.0.x and nothing leaves loopback
    head_ip: str = "127.0.0.2"
    _ips_used: int = 2

    def _next_ip(self) -> str:
        self._ips_used += 1
        return f"127.0.0.{self._ips_used}"

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Node:
        # every per-node port explicit: the defaults (e.g. the dashboard agent's 52365) clash
        # with the other nodes and with any other Ray instance on this machine
        args = [
            *args,
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ]
        log = self.root / f"{name}.log"
        fh = open(log, "wb")  # kept open for the node's lifetime
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, *, num_cpus: int = 1) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        node = self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--node-ip-address={self.head_ip}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--num-cpus={num_cpus}",
                "--resources=" + json.dumps({"head": 1}),
                f"--object-store-memory={self.object_store_bytes}",
                f"--temp-dir={self.ray_tmp}",
                "--disable-usage-stats",
            ],
        )
        wait_until(lambda: self._jobs_api_up() or not node.alive(), "the Ray Jobs API")
        if not node.alive():
            raise RuntimeError(f"ray head died:\n{node.log.read_text()[-3000:]}")
        return node

    def add_node(self, name: str, *, num_cpus: int = 1) -> Node:
        node = self._start(
            name,
            [
                f"--address={self.gcs_address}",
                f"--node-ip-address={self._next_ip()}",
                f"--num-cpus={num_cpus}",
                "--resources=" + json.dumps({name: 1}),
                f"--object-store-memory={self.object_store_bytes}",
                "--disable-usage-stats",
            ],
        )
        expected = sum(n.alive() for n in self.nodes)
        wait_until(
            lambda: self.alive_nodes() >= expected or not node.alive(), f"node {name} to join"
        )
        if not node.alive():
            raise RuntimeError(f"ray node {name} died:\n{node.log.read_text()[-3000:]}")
        return node

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.jobs_address + path, timeout=10) as r:
            return json.loads(r.read())

    def _jobs_api_up(self) -> bool:
        try:
            return "ray_version" in self._get("/api/version")
        except OSError:
            return False

    def alive_nodes(self) -> int:
        try:
            data = self._get("/api/v0/nodes?detail=false&limit=100")
        except OSError:
            return 0
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for r in rows if r.get("state") == "ALIVE")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill(signal.SIGTERM)
        self.nodes.clear()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


class S3Server:
    """moto's S3 server on 127.0.0.1 with fake credentials in the environment it returns."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def create_bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=self.endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)

    def stop(self) -> None:
        self._server.stop()
