"""A real multi-node Ray cluster and a real S3 server on loopback, for the cluster tests.

:class:`LocalCluster` runs ``ray start --head --block`` and ``ray start --address ... --block``
as separate process groups (one raylet each, its own custom resource so that placement across
nodes can be forced), with the dashboard and Jobs server on 127.0.0.1. Stopping a node kills
its process group only: ``ray stop`` would kill every Ray process of the machine, including
the test session's own instance.

:class:`S3Server` is moto's S3 application on 127.0.0.1 behind a fault-injecting WSGI layer
(access denied on a key, or the whole server stopped while a key is written), shared by the
object-storage tests (prep, training, the cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
#: bound on a node starting / joining (~10-20 s idle; any step may take 10x that under load)
STARTUP_TIMEOUT_S = 600.0


def free_port() -> int:
    """A port for a node's or a server's listener (outside the ephemeral range, never handed
    out twice: tests/ports.py)."""
    from ports import free_port as pick

    return pick()


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


def _stat(pid: int) -> tuple[int, int] | None:
    """``(process group, session)`` of ``pid`` from /proc (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes(sessions: set[int], marker: str | None = None) -> list[int]:
    """Pids of the live processes of these sessions (a node's ``ray start --block`` is its
    session leader; raylet, GCS, agents and workers inherit its session) or whose command
    line holds ``marker`` (e.g. the cluster's GCS address, for anything that left the
    session); zombies excluded."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        st = _stat(pid)
        if st is None:
            continue
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                if b"\nState:\tZ" in fh.read():
                    continue
        except OSError:
            continue
        if st[1] in sessions or (marker and marker in _cmdline(pid)):
            out.append(pid)
    return out


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    ip: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, *, grace_s: float = 3.0) -> None:
        """Stop the node: ``sig`` to its whole session (its ``ray start``, raylet, object
        store, agents and workers); whatever still runs after ``grace_s`` is SIGKILLed.
        SIGKILL is a node dying (its raylet stops without a word to the GCS)."""
        sid = self.proc.pid
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            pass
        if sig != signal.SIGKILL:
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_all(processes({sid}))
        self.proc.wait(timeout=60)
        wait_until(lambda: not processes({sid}), f"the processes of node {self.name} to end", 60)


@dataclass
class LocalCluster:
    """Head (0 CPUs for tasks, resource ``head``) + worker nodes (resource ``node<i>``)."""

    root: Path
    env: dict[str, str] = field(default_factory=cluster_env)
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    _all_nodes: list[Node] = field(default_factory=list)
    _tmp_dirs: list[str] = field(default_factory=list)
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
        n = 1
        while log.exists():  # a node started again under its name keeps the old log
            n += 1
            log = self.root / f"{name}-{n}.log"
        fh = open(log, "wb")  # kept open for the node's lifetime
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        node = Node(
            name,
            proc,
            log,
            ip=next(a.split("=", 1)[1] for a in args if a.startswith("--node-ip-address=")),
        )
        self.nodes.append(node)
        self._all_nodes.append(node)
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
        # A temp dir of its own: by default a node shares the head's, hence its runtime env
        # folders, and a node unpacking a job's working_dir (Ray removes and re-extracts it)
        # pulled it from under a job driver of another node (FileNotFoundError on getcwd);
        # on a real cluster every node has its own disk. The session's logs folder stays
        # shared (a link to the head's): the Jobs API reads a job driver's log through the
        # agent that submitted it, which on one machine is the head's
        tmp = tempfile.mkdtemp(prefix="lcn-", dir="/tmp")
        self._tmp_dirs.append(tmp)
        session = os.path.realpath(os.path.join(self.ray_tmp, "session_latest"))
        own = Path(tmp) / os.path.basename(session)
        own.mkdir()
        (own / "logs").symlink_to(Path(session) / "logs", target_is_directory=True)
        node = self._start(
            name,
            [
                f"--address={self.gcs_address}",
                f"--temp-dir={tmp}",
                f"--node-ip-address={self._next_ip()}",
                f"--num-cpus={num_cpus}",
                "--resources=" + json.dumps({name: 1}),
                f"--object-store-memory={self.object_store_bytes}",
                "--disable-usage-stats",
            ],
        )
        wait_until(lambda: self.node_id(node) is not None or not node.alive(), f"{name} to join")
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

    def node(self, name: str) -> Node:
        """The live node started under ``name`` (the latest one, if it was started again)."""
        live = [n for n in self.nodes if n.name == name and n.alive()]
        if not live:
            raise LookupError(f"no live node {name!r}")
        return live[-1]

    def node_id(self, node: Node) -> str | None:
        """Ray's id of ``node`` once the GCS has it ALIVE (None before, or when it is dead)."""
        try:
            rows = self._get("/api/v0/nodes?detail=false&limit=100")["data"]["result"]["result"]
        except (OSError, KeyError):
            return None
        ids = [r["node_id"] for r in rows if r.get("node_ip") == node.ip and r["state"] == "ALIVE"]
        return ids[0] if ids else None

    def alive_nodes(self) -> int:
        try:
            data = self._get("/api/v0/nodes?detail=false&limit=100")
        except OSError:
            return 0
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for r in rows if r.get("state") == "ALIVE")

    def processes(self) -> list[int]:
        """Every live process of this cluster (any node, past or present)."""
        return processes({n.proc.pid for n in self._all_nodes}, marker=self.gcs_address)

    def stop(self, grace_s: float = 3.0) -> None:
        """Fast teardown (``ray stop --force`` for this cluster only): SIGTERM to every node
        at once, at most ``grace_s`` for them to end, then SIGKILL to whatever of the cluster
        still runs (a head drains for ~60 s after SIGTERM). Checks that nothing is left."""
        for node in self.nodes:
            if node.alive():
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        _kill_all(self.processes())
        for node in self.nodes:
            node.proc.wait(timeout=60)
        wait_until(lambda: not self.processes(), "the cluster's processes to end", 60)
        self.nodes.clear()
        for tmp in (self.ray_tmp, *self._tmp_dirs):
            shutil.rmtree(tmp, ignore_errors=True)


class S3Server:
    """moto's S3 application (the S3 protocol over HTTP) on 127.0.0.1, behind a WSGI layer
    that injects storage failures; one bucket (:attr:`bucket`) is created at start.

    Faults, on writes (PUT, or POST of a multipart upload) of an object key ``prefix/rel`` of
    :attr:`bucket`:

    * :attr:`deny_write`: keys answered 403 AccessDenied (an unwritable bucket);
    * :attr:`stop_on_write`: the key whose first write stops the server: that request is
      answered 503, the listening socket closes (new connections are refused) and requests
      on connections still open get 503, until :meth:`start` serves again on the same port
      (moto keeps its objects in this process). :attr:`stopped_at` tells which key did it.

    Processes reach it either through the URI (:meth:`uri`: credentials, endpoint, scheme and
    region in the ``s3://`` URI, so a Ray worker started before needs no environment) or through
    the AWS_* variables of :meth:`env` (what a user sets, and what the cluster's nodes get).
    """

    def __init__(self, bucket: str) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.bucket = bucket
        self.port = free_port()
        self.deny_write: set[str] = set()
        self.stop_on_write: str | None = None
        self.stopped_at: str | None = None
        self.writes: list[str] = []  # keys written (or attempted), in arrival order
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None
        self._down = threading.Event()
        self.start()
        self.create_bucket(bucket)

    # ----------------------------------------------------------------- server lifecycle

    def start(self) -> None:
        """Serve (again) on :attr:`port`."""
        from moto.server import MotoRequestHandler
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        self._server = make_server(
            "127.0.0.1", self.port, self._app, threaded=True, request_handler=Quiet
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._down.clear()

    def stop(self) -> None:
        """Stop accepting connections (the port stays closed until :meth:`start`)."""
        self._down.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return not self._down.is_set()

    def restart_if_stopped(self) -> None:
        """Clear the faults; serve again if a fault stopped the server."""
        self.deny_write.clear()
        self.stop_on_write = None
        if not self.running:
            if self._stopper is not None:  # the fault's stop, still shutting the server down
                self._stopper.join()
                self._stopper = None
            self.stop()
            self.start()

    def _app(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        if self._down.is_set():
            return self._error(start_response, "503 Service Unavailable", "ServiceUnavailable")
        path = environ.get("PATH_INFO", "").lstrip("/")
        if environ["REQUEST_METHOD"] in ("PUT", "POST") and path.startswith(f"{self.bucket}/"):
            key = path.removeprefix(f"{self.bucket}/")
            self.writes.append(key)
            if key in self.deny_write:
                return self._error(start_response, "403 Forbidden", "AccessDenied")
            if key == self.stop_on_write:
                self.stop_on_write, self.stopped_at = None, key
                self._down.set()
                self._stopper = threading.Thread(target=self.stop, daemon=True)
                self._stopper.start()
                return self._error(start_response, "503 Service Unavailable", "ServiceUnavailable")
        return self._moto(environ, start_response)

    @staticmethod
    def _error(start_response: Callable, status: str, code: str) -> list[bytes]:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test</Message></Error>"
        ).encode()
        start_response(
            status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]

    # --------------------------------------------------------------------------- naming

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, prefix: str, **query: str) -> str:
        """``s3://`` URI of ``prefix`` in :attr:`bucket` that reaches this server from any
        process (credentials and endpoint in the URI)."""
        params = {
            "endpoint_override": f"127.0.0.1:{self.port}",
            "scheme": "http",
            "region": "us-east-1",
            **query,
        }
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"s3://testing:testing@{self.bucket}/{prefix}?{q}"

    def env(self) -> dict[str, str]:
        """Fake credentials and this endpoint, as AWS_* / MLflow variables."""
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


# --- checkpoints of cluster / S3 runs: weights compared tensor by tensor ---------------------


def weights(where) -> dict:
    """The model state dict of a checkpoint folder (local path or s3:// URI)."""
    from pipelines.checkpoint import load_model_state, local_checkpoint

    with local_checkpoint(where) as d:
        return load_model_state(d)


def assert_same_weights(a: dict, b: dict) -> None:
    """Same keys, and every tensor exactly equal (resume-equals-uninterrupted checks)."""
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
