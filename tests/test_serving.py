"""The registered model on its own: weights + recipe only, code and requirements inside it; it
loads in a fresh virtual environment built from its requirements alone, and `mlflow models serve`
answers REST clients (base64 mp4 in, masks out; HTTP 400 with the message for bad input).

Real components throughout: a SQLite MLflow store under tmp, a real `mlflow models serve`
process on 127.0.0.1 (free port), a real `python -m venv` + `pip install -r requirements.txt`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = "lstc-selfcontained"
TEXT = "the red square moving right"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny random-init checkpoint with Adam state (one step), registered from a run."""
    import torch

    from lstc.model import build_model
    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_recipe
    from pipelines.mlops.registry import register_checkpoint
    from pipelines.mlops.serving import example_frames
    from pipelines.mlops.tracking import Tracker
    from pipelines.predict import write_video

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root}/mlflow.db"
    recipe = load_recipe(
        "configs/refer_shapes_tiny.yaml",
        [f"tracking.uri={uri}", f"registry.model_name={NAME}", f"data.root={root / 'none'}"],
    )
    torch.manual_seed(0)
    model = build_model(recipe.model.without_pretrained())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()  # optimizer moments exist, as in a trained checkpoint
    model.eval()
    ckpt = save_checkpoint(
        root / "ckpt", model=model, recipe=recipe, epoch=1, global_step=1, optimizer=opt
    )
    tracker = Tracker.start({"tracking": {"uri": uri, "experiment": "serve"}}, system_metrics=False)
    tracker.end()
    version, alias = register_checkpoint(
        ckpt, recipe=recipe, run_id=tracker.run_id, metrics={"mean_iou": 0.1}
    )
    assert (version, alias) == ("1", "champion")
    video = root / "clip.mp4"
    write_video(video, example_frames(12), fps=10.0)
    return {
        "root": root,
        "uri": uri,
        "ckpt": ckpt,
        "run_id": tracker.run_id,
        "model_uri": f"models:/{NAME}@champion",
        "video": video,
    }


@pytest.fixture(scope="module")
def in_process(registered):
    """The pyfunc's output on the mp4 (sent as base64), loaded in this process."""
    from pipelines.mlops.registry import load_pyfunc

    pyfunc = load_pyfunc(registered["model_uri"], tracking_uri=registered["uri"])
    b64 = base64.b64encode(registered["video"].read_bytes()).decode("ascii")
    return pyfunc.predict(pd.DataFrame({"video_b64": [b64], "expression": [TEXT]}))


def masks_of(records) -> dict[int, np.ndarray]:
    from pipelines.mlops.serving import decode_mask_png

    return {int(r["frame"]): decode_mask_png(r["mask_png"]) for r in records}


def test_model_is_self_contained_and_beside_its_run(registered, in_process, request):
    """Weights + recipe only, the code and complete pinned requirements inside, the files in
    the run's experiment under tmp (never ./mlruns of the checkout)."""
    from importlib.metadata import version

    from mlflow import MlflowClient

    from pipelines.mlops.registry import _download_model, _download_root, folder_size

    client = MlflowClient(tracking_uri=registered["uri"])
    mv = client.get_model_version(NAME, "1")
    logged = client.get_logged_model(mv.source.rsplit("/", 1)[-1])
    run = client.get_run(registered["run_id"])
    exp = client.get_experiment(run.info.experiment_id)
    assert logged.source_run_id == registered["run_id"]
    assert logged.experiment_id == run.info.experiment_id
    assert logged.artifact_location.startswith(exp.artifact_location)
    assert str(registered["root"]) in logged.artifact_location

    local = _download_model(registered["model_uri"], registered["uri"])
    request.addfinalizer(lambda: shutil.rmtree(_download_root(local)))
    bundle = local / "artifacts" / "checkpoint"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "_COMPLETE",
        "metrics.json",
        "model.pt",
        "recipe.yaml",
    ]
    # the checkpoint's files as they are, without train_state.pt (Adam moments, scheduler)
    ckpt = Path(registered["ckpt"])
    assert (ckpt / "train_state.pt").is_file()
    for name in ("model.pt", "recipe.yaml", "metrics.json"):
        assert (bundle / name).read_bytes() == (ckpt / name).read_bytes(), name
    state = (ckpt / "train_state.pt").stat().st_size
    assert folder_size(bundle) <= folder_size(ckpt) - state + 1024  # + the _COMPLETE marker
    assert int(mv.tags["weights_bytes"]) == folder_size(bundle)
    assert int(mv.tags["checkpoint_bytes"]) == folder_size(registered["ckpt"])
    code = {p.name for p in (local / "code").iterdir()}
    assert {"lstc", "data_prep", "pipelines"} <= code
    assert not list((local / "code").rglob("__pycache__"))
    reqs = (local / "requirements.txt").read_text().split()
    for dist in ("torch", "opencv-python-headless", "decord", "av", "mlflow", "pydantic"):
        assert f"{dist}=={version(dist)}" in reqs, dist
    mlmodel = (local / "MLmodel").read_text()
    assert "_tracking_service" not in mlmodel and "code: code" in mlmodel

    assert list(in_process.columns) == [
        "row",
        "frame",
        "mask_png",
        "height",
        "width",
        "score",
        "area",
    ]
    assert in_process["frame"].tolist() == list(range(12))
    assert set(in_process["height"]) == {48} and set(in_process["width"]) == {64}


def test_in_process_pyfunc_matches_lstc_predict(registered, in_process, tmp_path):
    """The served masks are those `lstc predict --model` writes."""
    from PIL import Image

    from pipelines.cli import main as lstc_main

    out = tmp_path / "out"
    rc = lstc_main(
        ["predict", str(registered["video"]), TEXT, "--model", registered["model_uri"]]
        + ["--tracking-uri", registered["uri"], "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    served = masks_of(in_process.to_dict("records"))
    folder = out / "the-red-square-moving-right" / "masks"
    written = {int(p.stem): np.asarray(Image.open(p)) > 0 for p in folder.glob("*.png")}
    assert sorted(written) == sorted(served) == list(range(12))
    assert all(np.array_equal(written[t], served[t]) for t in served)


FRESH_SCRIPT = """
import base64, importlib.util, json, sys
assert importlib.util.find_spec("pipelines") is None, "the repository is on sys.path"
assert importlib.util.find_spec("lstc") is None, "the repository is on sys.path"
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import pipelines
video = open(sys.argv[2], "rb").read()
out = model.predict(pd.DataFrame({"video_b64": [base64.b64encode(video).decode()],
                                  "expression": [sys.argv[3]]}))
json.dump({"records": out.to_dict("records"), "pipelines": pipelines.__file__},
          open(sys.argv[4], "w"))
"""


@pytest.mark.slow
def test_loads_in_a_fresh_venv_from_its_requirements(registered, in_process, tmp_path, request):
    """`python -m venv` outside the repository + `pip install -r requirements.txt` of the
    model only; the model predicts there (subprocess, repository not importable) exactly the
    masks it predicts here."""
    from pipelines.mlops.registry import _download_model, _download_root

    local = _download_model(registered["model_uri"], registered["uri"])
    request.addfinalizer(lambda: shutil.rmtree(_download_root(local)))
    venv = tmp_path / "venv"
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": registered["uri"],
    }
    for k in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_CONFIG_FILE"):
        if k in os.environ:  # where this machine's package index/cache is
            env[k] = os.environ[k]
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=tmp_path, env=env)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-r"]
        + [str(local / "requirements.txt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    print(f"fresh venv built in {time.monotonic() - start:.0f} s")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_SCRIPT)
    result = tmp_path / "out.json"
    run = subprocess.run(
        [str(venv / "bin/python"), str(script), registered["model_uri"]]
        + [str(registered["video"]), TEXT, str(result)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(result.read_text())
    assert not got["pipelines"].startswith(str(ROOT))  # the model's own copy of the code
    fresh = masks_of(got["records"])
    here = masks_of(in_process.to_dict("records"))
    assert sorted(fresh) == sorted(here) == list(range(12))
    assert all(np.array_equal(fresh[t], here[t]) for t in here)
    assert [r["score"] for r in got["records"]] == in_process["score"].tolist()


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=SERVE_REQUEST_TIMEOUT_S + 60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


#: the scoring server answers 504 after its request timeout (MLflow's default: 60 s); the first
#: request decodes the video and runs the network, which may pass that on a loaded 2-core box
SERVE_REQUEST_TIMEOUT_S = 600


def test_mlflow_models_serve_answers_rest(registered, in_process, tmp_path):
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the server execs uvicorn from PATH
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=registered["uri"],
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve"]
        + ["-m", registered["model_uri"], "--env-manager", "local", "-h", "127.0.0.1"]
        + ["-p", str(port), "--timeout", str(SERVE_REQUEST_TIMEOUT_S)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
            time.sleep(0.5)
        b64 = base64.b64encode(registered["video"].read_bytes()).decode("ascii")
        cols = ["video_b64", "expression"]
        status, body = _post(
            f"{base}/invocations", {"dataframe_split": {"columns": cols, "data": [[b64, TEXT]]}}
        )
        assert status == 200, body
        served = masks_of(body["predictions"])
        here = masks_of(in_process.to_dict("records"))
        assert sorted(served) == sorted(here) == list(range(12))
        assert all(np.array_equal(served[t], here[t]) for t in here)

        status, body = _post(
            f"{base}/invocations", {"dataframe_split": {"columns": cols, "data": [[b64, "  "]]}}
        )
        assert status == 400
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "the expression is empty" in body["message"]
        not_video = base64.b64encode(b"plain text, not a video").decode()
        status, body = _post(
            f"{base}/invocations",
            {"dataframe_split": {"columns": cols, "data": [[not_video, TEXT]]}},
        )
        assert status == 400 and "cannot read video" in body["message"]
    finally:  # the server and its uvicorn workers: the process group this test started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
