"""``lstc weights fetch``: generated files in the release layouts served by a real
``python -m http.server`` on loopback (and file:// URLs); nothing comes from the internet.

Checks: files land in DIR with the sha256 recorded; the overlay recipe loads and builds the
network from the local copies; a rerun with the server gone downloads nothing; a damaged copy
is detected; a torchvision mirror whose file does not match the hash in its name is refused;
a missing file without URL says which flag to pass.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port
from test_cstm_exact import release_i3d_state, vec, write_glove

from lstc.backbones import TemporalEncoder
from pipelines.cli import main
from pipelines.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    """A loopback http.server over tmp_path/srv; yields (base URL, folder, stop())."""
    srv = tmp_path / "srv"
    srv.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=srv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)

    deadline = time.monotonic() + 60
    while True:  # bounded poll until the server accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop()
                pytest.fail("python -m http.server did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", srv, stop
    stop()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_recipe(tmp_path: Path, **model) -> Path:
    """A tiny recipe whose model needs the release's I3D file and GloVe vectors."""
    doc = {
        "base": str(ROOT / "configs" / "refer_shapes_tiny.yaml"),
        "model": {
            "preset": "tiny_cstm",
            "temporal_backbone": "i3d",
            "temporal_weights": str(tmp_path / "nowhere" / "i3d_rgb.pth"),
            "text_encoder": "glove",
            "text_pretrained": True,
            "word_vectors": str(tmp_path / "nowhere" / "glove.840B.300d.txt"),
            **model,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_fetch_writes_files_manifest_and_overlay_then_works_offline(tmp_path, server, capsys):
    base, srv, stop = server
    torch.save(release_i3d_state(), srv / "i3d_rgb.pth")
    glove = tmp_path / "glove_src.txt"  # served through file://
    write_glove(glove, {"the": vec(1), "dog": vec(2)})
    recipe = write_recipe(tmp_path)
    out = tmp_path / "weights"
    argv = ["weights", "fetch", "--recipe", str(recipe), "--to", str(out)]
    argv += ["--i3d-url", f"{base}/i3d_rgb.pth", "--glove-url", glove.as_uri()]
    assert main(argv) == 0
    assert sha(out / "i3d_rgb.pth") == sha(srv / "i3d_rgb.pth")
    assert (out / "glove_src.txt").read_bytes() == glove.read_bytes()
    manifest = json.loads((out / "weights.json").read_text())
    assert manifest["model.temporal_weights"]["sha256"] == sha(srv / "i3d_rgb.pth")
    assert manifest["model.word_vectors"] == {
        "url": glove.as_uri(),
        "file": str(out / "glove_src.txt"),
        "sha256": sha(glove),
    }
    # the overlay is a recipe: the original plus local paths
    r = load_recipe(out / "recipe.yaml", [])
    assert r.model.temporal_weights == str(out / "i3d_rgb.pth")
    assert r.model.word_vectors == str(out / "glove_src.txt")
    assert r.model.cmam_style == "release" and r.data == load_recipe(recipe, []).data
    enc = TemporalEncoder(backbone="i3d", weights=r.model.temporal_weights)
    assert torch.equal(
        enc.state_dict()["stages.0.0.conv3d.weight"],
        release_i3d_state()["conv3d_1a_7x7.conv3d.weight"],
    )
    # once: with the server gone and the file:// source removed, a rerun only verifies
    stop()
    glove.unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already present (sha256 verified)") == 2
    # a damaged copy is detected; it cannot be fetched again now, so the command fails
    with open(out / "i3d_rgb.pth", "r+b") as f:
        f.seek(100)
        f.write(b"\x00damaged\x00")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "sha256 differs" in err and "cannot download" in err and "i3d_rgb.pth" in err


def test_fetch_refuses_a_mirror_file_that_does_not_match_its_name(tmp_path, server, capsys):
    base, srv, _ = server
    (srv / "resnet18-f37072fd.pth").write_bytes(b"not the resnet18 weights")
    recipe = write_recipe(
        tmp_path,
        spatial_backbone="resnet18",
        spatial_weights="IMAGENET1K_V1",
        temporal_weights=None,
        text_encoder="tiny",
        text_pretrained=False,
    )
    out = tmp_path / "weights"
    argv = ["weights", "fetch", "--recipe", str(recipe), "--to", str(out)]
    assert main([*argv, "--torchvision-url-base", base]) == 1
    err = capsys.readouterr().err
    assert "does not start with f37072fd" in err and "wrong mirror" in err
    assert not (out / "resnet18-f37072fd.pth").exists()
    # no URL for a file that is not here: the error names the flag to pass
    recipe = write_recipe(tmp_path)
    assert main(["weights", "fetch", "--recipe", str(recipe), "--to", str(out)]) == 1
    assert "give its URL with --i3d-url" in capsys.readouterr().err
