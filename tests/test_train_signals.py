"""SIGTERM / SIGINT to ``lstc train`` stop it in order, and a normal run prints no alarming lines.

The end-to-end test runs the real CLI (``python -m pipelines.cli train``) as a subprocess on the
tiny shards, with its own local Ray instance (own ``RAY_TMPDIR``) and a SQLite MLflow store:

1. SIGTERM once epoch 1 is checkpointed and epoch 2 has started: exit 143, the last stderr line
   says where the run stopped and which checkpoint a rerun resumes from, no traceback / abort,
   MLflow run KILLED, every process of its Ray instance gone;
2. the same command again: resumes after epoch 1; SIGINT to its whole process group (what
   Ctrl-C in a terminal does: Ray's GCS and raylet get it too) once epoch 2 is checkpointed and
   epoch 3 has started: exit 130, same checks;
3. the same command again: resumes after epoch 2, finishes (exit 0), MLflow run FINISHED.

No run prints Ray Core's ``E ... core_worker.cc`` line (the preemption watcher's restartable
actor, ray-project/ray#53727) or a ``UserWarning`` (Ray Data's ``filter(fn)`` hint).

The unit tests pin the pieces: the signal handler's two modes, the stop message from a
hand-written run directory, the Ray Train hook the driver relies on, and the runtime env.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "refer_shapes_tiny.yaml"
EPOCHS = 4
ALARMING = re.compile(r"^.*\bE\b.*core_worker\.cc.*$|^.*UserWarning.*$", re.MULTILINE)


# ------------------------------------------------------------------------------ unit tests


def test_exit_codes_follow_the_shell_convention():
    from pipelines.ray_setup import StoppedBySignal

    term, intr = StoppedBySignal(signal.SIGTERM, "x"), StoppedBySignal(signal.SIGINT, "y")
    assert (term.exit_code, term.signal_name, str(term)) == (143, "SIGTERM", "x")
    assert (intr.exit_code, intr.signal_name) == (130, "SIGINT")


def test_signal_stop_interrupts_or_starts_a_graceful_stop_and_restores_handlers():
    from pipelines.ray_setup import SignalStop

    before = signal.getsignal(signal.SIGTERM)
    stop = SignalStop()
    assert stop.install()
    try:
        # no graceful stop available: the first signal interrupts the work under way
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and not stop.graceful_started
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before

    calls: list[str] = []
    stop = SignalStop()
    stop.graceful = lambda: calls.append("abort") is None
    stop.install()
    try:
        signal.raise_signal(signal.SIGINT)  # graceful: the handler returns
        assert (stop.signum, stop.graceful_started, calls) == (signal.SIGINT, True, ["abort"])
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait any longer
            signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGINT and calls == ["abort"]  # the first one counts
    finally:
        stop.restore()

    done: list[int] = []
    stop.on_stop(lambda: done.append(1))
    stop.on_stop(lambda: done.append(2))
    stop.run_on_stop()
    stop.run_on_stop()
    assert done == [2, 1]  # most recent first, each once


def test_an_orderly_stop_that_never_ends_is_interrupted_after_the_grace_period():
    """Nothing answers the abort (the job-wide signal took Ray's processes too): after
    ``grace_s`` the main thread is interrupted as by a second signal."""
    import threading

    from pipelines.ray_setup import SignalStop

    stop = SignalStop(grace_s=0.2)
    stop.graceful = lambda: True  # an abort that never completes
    stop.install()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert stop.graceful_started and not stop.grace_expired
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            threading.Event().wait(120)  # a blocking call that never returns by itself
        assert time.monotonic() - t0 < 60  # interrupted, not timed out
        assert stop.grace_expired and stop.signum == signal.SIGTERM
    finally:
        stop.restore()

    settled = SignalStop(grace_s=0.2)
    settled.graceful = lambda: True
    settled.install()
    try:
        signal.raise_signal(signal.SIGINT)
        settled.settled()  # the blocking call returned in time: no interruption follows
        assert settled._timer is None and not settled.grace_expired
    finally:
        settled.restore()


def test_grace_period_comes_from_the_environment(monkeypatch):
    """``LSTC_STOP_GRACE_S`` sets how long the orderly stop may take (default 10 s); a value
    that is not a number of seconds > 0 warns, naming it, and the default holds."""
    from pipelines.ray_setup import STOP_GRACE_ENV, SignalStop

    monkeypatch.delenv(STOP_GRACE_ENV, raising=False)
    assert SignalStop().grace_s == 10.0
    monkeypatch.setenv(STOP_GRACE_ENV, " 2.5 ")
    assert SignalStop().grace_s == 2.5
    assert SignalStop(grace_s=0.2).grace_s == 0.2  # an explicit value wins
    for bad in ("abc", "0", "-3", "nan"):
        monkeypatch.setenv(STOP_GRACE_ENV, bad)
        with pytest.warns(RuntimeWarning, match=f"LSTC_STOP_GRACE_S='{bad}' is not a number"):
            assert SignalStop().grace_s == 10.0


def _fake_run_dir(root: Path, events: list[dict], checkpoint_epoch: int | None) -> Path:
    from pipelines.checkpoint import MODEL_FILE, RECIPE_FILE

    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    for epoch in (1, 2):  # checkpoint 2 is on disk but Ray Train never registered it
        ckpt = run_dir / f"checkpoint_epoch_{epoch:04d}"
        ckpt.mkdir()
        (ckpt / MODEL_FILE).write_bytes(b"")
        (ckpt / RECIPE_FILE).write_text("")
    if checkpoint_epoch is not None:
        snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch_0001"}}
        (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    return run_dir


EVENTS = [
    {"event": "driver_start", "time": 100.0},
    {"event": "epoch_start", "epoch": 1, "time": 101.0},
    {"event": "epoch_end", "epoch": 1, "time": 102.0},
    {"event": "epoch_start", "epoch": 2, "time": 103.0},
    {"event": "epoch_end", "epoch": 2, "time": 104.0},
    {"event": "epoch_start", "epoch": 3, "time": 105.0},
]


def test_stop_message_names_the_epoch_and_the_checkpoint_ray_train_resumes(tmp_path):
    from pipelines.train.stopping import TrainingStopped, stopped_error

    run_dir = _fake_run_dir(tmp_path, EVENTS, checkpoint_epoch=1)
    exc = stopped_error(signal.SIGTERM, "r", run_dir, since=99.0)
    assert isinstance(exc, TrainingStopped) and exc.exit_code == 143
    ckpt = run_dir / "checkpoint_epoch_0001"
    assert str(exc) == (
        f"stopped by SIGTERM during epoch 3; the last checkpoint is epoch 1 ({ckpt}); "
        "rerun the same command to resume"
    )
    assert (exc.epoch, exc.checkpoint_epoch, exc.checkpoint) == (3, 1, ckpt)

    # this driver (started at 200) had not written its driver_start yet: older events are not
    # where it stands
    exc = stopped_error(signal.SIGINT, "r", run_dir, since=200.0)
    assert str(exc).startswith("stopped by SIGINT before training started; the last checkpoint")
    assert exc.epoch is None and exc.exit_code == 130


def test_stop_message_without_a_registered_checkpoint(tmp_path):
    from pipelines.train.stopping import stopped_error

    run_dir = _fake_run_dir(tmp_path, EVENTS[:2], checkpoint_epoch=None)
    exc = stopped_error(signal.SIGTERM, "r", run_dir, since=99.0)
    assert str(exc) == (
        "stopped by SIGTERM during epoch 1; no epoch was checkpointed yet; "
        "rerun the same command to start again"
    )
    assert exc.checkpoint is None and exc.checkpoint_epoch is None


def test_ray_train_hands_the_controller_to_the_hook_we_override():
    """The driver gets the controller from ``TorchTrainer._register_sigint_handler`` (Ray
    Train calls it in fit() with the controller handle); a Ray upgrade that renames it must
    fail here rather than leave SIGINT to Ray's handler."""
    from ray.train.torch import TorchTrainer

    from pipelines.ray_setup import SignalStop
    from pipelines.train.stopping import trainer_class

    assert list(inspect.signature(TorchTrainer._register_sigint_handler).parameters) == [
        "self",
        "controller",
    ]
    sources = [inspect.getsource(c) for c in TorchTrainer.__mro__ if c.__module__ != "builtins"]
    assert any("self._register_sigint_handler(controller)" in s for s in sources)
    assert issubclass(trainer_class(SignalStop()), TorchTrainer)


def test_stoppable_trainer_aborts_the_controller_on_a_signal(ray_local):
    """With the controller handed over, a signal calls its ``abort`` (a real actor here)
    instead of interrupting the driver."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.ray_setup import SignalStop
    from pipelines.train.stopping import trainer_class

    @ray_local.remote(num_cpus=0)
    class Controller:
        def __init__(self) -> None:
            self.aborts = 0

        def abort(self) -> None:
            self.aborts += 1

        def count(self) -> int:
            return self.aborts

    controller = Controller.remote()
    stop = SignalStop()
    trainer = trainer_class(stop)(
        lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1)
    )
    trainer._register_sigint_handler(controller)
    assert isinstance(trainer, TorchTrainer)
    stop.install()
    try:
        signal.raise_signal(signal.SIGTERM)
    finally:
        stop.restore()
    assert stop.graceful_started and stop.signum == signal.SIGTERM
    assert ray_local.get(controller.count.remote()) == 1
    ray_local.kill(controller)


def test_a_torn_down_worker_group_is_told_from_a_real_failure():
    """A report that meets the synchronization actor killed by Ray Train (the controller
    tearing the group down) waits to be killed; a dead node or any other error raises."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError

    from pipelines.train.loop import group_torn_down

    def died(class_name: str, message: str) -> ActorDiedError:
        ctx = ActorDiedErrorContext(
            class_name=class_name, actor_id=bytes(16), error_message=message
        )
        return ActorDiedError(ctx)

    killed = "The actor is dead because it was killed by `ray.kill`."
    node = "The actor died because its node has died. Node Id: 01ab"
    assert group_torn_down(died("SynchronizationActor", killed))
    assert not group_torn_down(died("SynchronizationActor", node))
    assert not group_torn_down(died("RayTrainWorker", killed))
    assert not group_torn_down(RuntimeError(killed + " class_name: SynchronizationActor"))


def test_runtime_env_turns_the_preemption_watcher_off_only_for_local_instances(ray_local):
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR

    from pipelines.ray_setup import PREEMPTION_WATCHER_ENV, runtime_env

    assert PREEMPTION_WATCHER_ENV == ENABLE_PREEMPTION_WATCHER_ENV_VAR  # Ray's own switch
    assert runtime_env(local=True)["env_vars"][PREEMPTION_WATCHER_ENV] == "0"
    assert PREEMPTION_WATCHER_ENV not in runtime_env()["env_vars"]  # clusters keep it

    # workers know their own cluster (the State API client must not search the machine)
    @ray_local.remote(num_cpus=0)
    def address() -> str | None:
        return os.environ.get("RAY_ADDRESS")

    assert ray_local.get(address.remote()) == ray_local.get_runtime_context().gcs_address


# ------------------------------------------------------------------------------ end to end


def _ray_processes(tmpdir: str) -> list[int]:
    """Processes started with ``RAY_TMPDIR=tmpdir`` (the subprocess's Ray instance)."""
    marker = f"RAY_TMPDIR={tmpdir}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


#: bound on a run reaching the point where the test signals it (its own Ray instance started,
#: an epoch trained and checkpointed: under a minute idle, 10x that on a loaded 2-core box)
REACH_TIMEOUT_S = 900


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, err: Path, what: str) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"lstc train exited ({proc.returncode}) before {what}:\n{_tail(err)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {REACH_TIMEOUT_S} s:\n{_tail(err)}")
        time.sleep(0.2)


WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\((RayTrainWorker|pid=)[^)]*\)")


def _driver_lines(text: str) -> str:
    """stderr without the lines Ray forwards from worker processes: while Ray Train tears the
    worker group down, a worker killed a moment after its peer may log the peer's death (a
    gloo "connection closed" in a collective) - Ray's teardown order, not ours (the report
    path is quieted: ``pipelines.train.loop._report``)."""
    return "\n".join(line for line in text.splitlines() if not WORKER_LINE.match(line))


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def _events(run_dir: Path) -> list[dict]:
    from pipelines.train.loop import read_events

    try:
        return read_events(run_dir)
    except ValueError:  # a line being written
        return []


def _in_epoch_after_checkpoint(run_dir: Path, epoch: int, drivers: int) -> Callable[[], bool]:
    """Ray Train has registered the checkpoint of ``epoch - 1`` and the ``drivers``-th driver
    has started ``epoch``."""
    from pipelines.train.resume import latest_checkpoint

    def cond() -> bool:
        latest = latest_checkpoint(run_dir)
        if latest is None or latest[0] != epoch - 1:
            return False
        events = _events(run_dir)
        starts = [i for i, e in enumerate(events) if e["event"] == "driver_start"]
        if len(starts) < drivers:
            return False
        mine = events[starts[drivers - 1] :]
        return any(e["event"] == "epoch_start" and e["epoch"] == epoch for e in mine)

    return cond


def _epochs_started(events: list[dict], driver: int) -> list[int]:
    starts = [i for i, e in enumerate(events) if e["event"] == "driver_start"] + [len(events)]
    part = events[starts[driver - 1] : starts[driver]]
    return [e["epoch"] for e in part if e["event"] == "epoch_start"]


GRACE_S = 120  # LSTC_STOP_GRACE_S of the runs below


@pytest.mark.slow
def test_sigterm_and_sigint_stop_train_cleanly_and_reruns_resume(tiny_shards, tmp_path):
    from mlflow import MlflowClient

    from pipelines.train.driver import RUN_ID_FILE
    from pipelines.train.loop import read_events

    name = "signals"
    storage = tmp_path / "runs"
    run_dir = storage / name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(TINY), "--no-register"]
    cmd += [
        f"data.root={tiny_shards}",
        f"train.epochs={EPOCHS}",
        f"train.storage_path={storage}",
        f"train.run_name={name}",
        f"tracking.uri={uri}",
    ]
    ray_tmp = tempfile.mkdtemp(prefix="lstc-sig-", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = ray_tmp  # its own local Ray instance, whose processes we can find
    # The orderly stop (abort Ray Train) must end within the grace period, else it is forced
    # and aborted_ray_train is false: 10 s by default, which a Ray Train abort (actor calls,
    # worker and placement group teardown) can pass on a loaded 2-core box. The test checks
    # the orderly stop, not the clock; the forced stop has its unit test above.
    env["LSTC_STOP_GRACE_S"] = str(GRACE_S)

    def start(tag: str) -> tuple[subprocess.Popen, Path, Path]:
        out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(
                cmd, stdout=fo, stderr=fe, env=env, cwd=tmp_path, start_new_session=True
            )
        return proc, out, err

    def stop(sig: signal.Signals, epoch: int, drivers: int, tag: str, group: bool) -> Path:
        proc, _, err = start(tag)
        try:
            _wait_for(
                _in_epoch_after_checkpoint(run_dir, epoch, drivers),
                proc,
                err,
                f"epoch {epoch} after checkpoint {epoch - 1}",
            )
            if group:  # the driver and the Ray processes it started (own session)
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            rc = proc.wait(timeout=GRACE_S + 300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rc == 128 + sig, _tail(err)
        return err

    def check_stopped(err: Path, sig: signal.Signals, epoch: int, drivers: int) -> int:
        """Checks the stop; returns the epoch it landed in: ``epoch`` or, when the machine is
        slow to deliver the signal, a later one (the message names it).

        The message is read from Ray Train's registered checkpoint, which is what a rerun
        resumes from. Ray Train's abort kills the worker actors asynchronously (``ray.kill``),
        so a worker may still journal the start of the next epoch after the driver wrote its
        message: the journal may run ahead of the message, never behind it."""
        from pipelines.train.resume import latest_checkpoint

        text = err.read_text(errors="replace")
        last = text.rstrip("\n").splitlines()[-1]
        m = re.fullmatch(
            rf"lstc train: stopped by {sig.name} during epoch (\d+); the last checkpoint is "
            r"epoch (\d+) \((.+)\); rerun the same command to resume",
            last,
        )
        assert m, last
        landed, ckpt_epoch, ckpt = int(m.group(1)), int(m.group(2)), m.group(3)
        assert landed >= epoch and ckpt_epoch == landed - 1, last
        assert ckpt == str(run_dir / f"checkpoint_epoch_{ckpt_epoch:04d}")
        assert latest_checkpoint(run_dir)[0] == ckpt_epoch  # what the rerun resumes from
        epoch = landed
        own = _driver_lines(text)
        for bad in ("Traceback", "Aborted", "core dumped", "*** SIGTERM received"):
            assert bad not in own, f"{bad!r} on stderr:\n{_tail(err)}"
        events = read_events(run_dir)
        starts = [i for i, e in enumerate(events) if e["event"] == "driver_start"]
        mine = events[starts[drivers - 1] :]
        stopped = [e for e in mine if e["event"] == "driver_stopped"]
        assert len(stopped) == 1
        assert (stopped[0]["signal"], stopped[0]["aborted_ray_train"]) == (sig.name, True)
        started = _epochs_started(events, drivers)
        assert epoch in started and started[-1] <= epoch + 1
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        assert run.info.status == "KILLED"
        deadline = time.monotonic() + 300  # the local Ray instance is shut down (a bound)
        while _ray_processes(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ray_processes(ray_tmp) == []
        return epoch

    try:
        # 1. SIGTERM in epoch 2
        err1 = stop(signal.SIGTERM, epoch=2, drivers=1, tag="first", group=False)
        run_id = (run_dir / RUN_ID_FILE).read_text().strip()
        first = check_stopped(err1, signal.SIGTERM, epoch=2, drivers=1)

        # 2. the same command resumes after the last checkpoint; Ctrl-C (SIGINT to the group)
        # in the epoch after the one it resumed
        err2 = stop(signal.SIGINT, epoch=first + 1, drivers=2, tag="second", group=True)
        second = check_stopped(err2, signal.SIGINT, epoch=first + 1, drivers=2)
        assert _epochs_started(read_events(run_dir), 2)[0] == first  # nothing redone

        # 3. the same command resumes after epoch 2 and finishes
        proc, out3, err3 = start("third")
        try:
            rc = proc.wait(timeout=2 * REACH_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rc == 0, _tail(err3)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    events = read_events(run_dir)
    assert [e["resumed"] for e in events if e["event"] == "driver_start"] == [False, True, True]
    assert _epochs_started(events, 3) == list(range(second, EPOCHS + 1))
    assert events[-1]["event"] == "train_end"
    block = re.search(r"^\{$.*?^\}$", out3.read_text(), re.DOTALL | re.MULTILINE)
    assert block, _tail(out3)
    summary = json.loads(block.group(0))
    assert summary["mlflow_run_id"] == run_id
    assert f"resuming run {name} from epoch {second - 1} checkpoint" in out3.read_text()
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FINISHED"
    for err in (err1, err2, err3):
        text = err.read_text(errors="replace")
        assert ALARMING.findall(text) == [], f"{err.name}: {ALARMING.findall(text)}"
        assert "Traceback" not in _driver_lines(text), _tail(err)
