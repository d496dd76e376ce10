"""``lstc weights fetch``: every pretrained file a recipe needs, downloaded once, for offline use.

Reads the recipe's model section and fetches, into --to DIR:

* torchvision weights named by an enum (``spatial_weights: IMAGENET1K_V1``, S3D /
  R(2+1)D ``KINETICS400_V1``) from the enum's own URL (or --torchvision-url-base, a mirror
  of https://download.pytorch.org/models/); the sha256 prefix in torchvision's file name is
  checked;
* the I3D checkpoint (``temporal_weights`` of ``temporal_backbone: i3d``) from --i3d-url and
  the GloVe text file (``word_vectors`` of ``text_encoder: glove``) from --glove-url
  (http(s):// or file:// URLs); without a URL an existing local file is used where it is;
* a transformers text encoder given by hub name (``text_pretrained: true``), as a snapshot
  directory (huggingface_hub).

Each file is written atomically, its sha256 recorded in DIR/weights.json; a rerun verifies
the files already there against that record and downloads only what is missing or damaged.
Finally DIR/recipe.yaml is written: ``base:`` the recipe, plus the model keys pointing at
the local copies, so ``lstc train --config DIR/recipe.yaml`` never reaches the internet (put
DIR on storage every worker mounts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPILOG = """examples:
  lstc weights fetch --recipe configs/a2d_paper.yaml --to /shared/weights
  lstc weights fetch --recipe my_cstm.yaml --to /shared/weights \\
      --i3d-url https://example.org/i3d_rgb.pth --glove-url file:///data/glove.840B.300d.txt
  lstc train --config /shared/weights/recipe.yaml"""

TORCHVISION_BASE = "https://download.pytorch.org/models/"
MANIFEST = "weights.json"
OVERLAY = "recipe.yaml"
_ENUM = re.compile(r"^[A-Z][A-Z0-9_]*$")
_TV_HASH = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's file-name convention


class FetchError(RuntimeError):
    """A file cannot be fetched or verified (the message says which and what to do)."""


@dataclass(frozen=True)
class Need:
    """One pretrained file: the model key it fills, where it comes from, its local name."""

    key: str
    url: str | None
    name: str
    local: str | None = None  # an existing local file used in place when there is no URL
    hash_prefix: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    f = sub.add_parser(
        "fetch",
        help="download a recipe's pretrained files and write a recipe overlay",
        description=(__doc__ or "").split("\n\n", 1)[-1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--recipe", "--config", dest="recipe", required=True, help="recipe YAML")
    f.add_argument("--to", required=True, type=Path, help="folder for the files and overlay")
    f.add_argument("--i3d-url", default=None, help="URL of i3d_rgb.pth (http(s):// or file://)")
    f.add_argument("--glove-url", default=None, help="URL of the GloVe 300-d text file")
    f.add_argument(
        "--torchvision-url-base",
        default=None,
        help=f"mirror of {TORCHVISION_BASE} (same file names)",
    )


def _is_enum(spec: str | None) -> bool:
    return bool(spec) and bool(_ENUM.match(spec)) and not os.path.exists(spec)


def _torchvision_need(key: str, arch: str, spec: str, base: str | None) -> Need:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if spec not in enum.__members__:
        raise FetchError(f"{key}={spec!r} is not a torchvision weight of {arch}")
    url = enum[spec].url
    name = url.rsplit("/", 1)[-1]
    if base:
        url = base.rstrip("/") + "/" + name
    m = _TV_HASH.search(name)
    return Need(key, url, name, hash_prefix=m.group(1) if m else None)


def _file_need(key: str, spec: str | None, url: str | None, flag: str) -> Need:
    if url:
        name = Path(urllib.parse.urlparse(url).path).name or key.rsplit(".", 1)[-1]
        return Need(key, url, name)
    if spec and Path(spec).expanduser().is_file():
        path = str(Path(spec).expanduser().resolve())
        return Need(key, None, Path(path).name, local=path)
    raise FetchError(f"{key}={spec!r} does not exist here: give its URL with {flag} URL")


def needs_of(model: Any, args: argparse.Namespace) -> list[Need]:
    """The files `model` (a ModelConfig) needs, in a fixed order."""
    out: list[Need] = []
    tv = args.torchvision_url_base
    if model.uses_spatial and model.spatial_backbone != "tiny" and _is_enum(model.spatial_weights):
        out.append(
            _torchvision_need(
                "model.spatial_weights", model.spatial_backbone, model.spatial_weights, tv
            )
        )
    if model.uses_temporal and model.temporal_backbone == "i3d" and model.temporal_weights:
        out.append(
            _file_need("model.temporal_weights", model.temporal_weights, args.i3d_url, "--i3d-url")
        )
    elif (
        model.uses_temporal
        and model.temporal_backbone != "tiny"
        and _is_enum(model.temporal_weights)
    ):
        out.append(
            _torchvision_need(
                "model.temporal_weights", model.temporal_backbone, model.temporal_weights, tv
            )
        )
    if model.text_encoder == "glove" and model.text_pretrained:
        out.append(
            _file_need("model.word_vectors", model.word_vectors, args.glove_url, "--glove-url")
        )
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path) -> str:
    """Stream `url` to `dest` atomically (progress bar); returns the sha256."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest()


def fetch_one(need: Need, to: Path, manifest: dict[str, Any]) -> tuple[str, str]:
    """Make `need` available locally; returns (local path, what was done)."""
    if need.url is None:
        assert need.local is not None
        digest = sha256_of(Path(need.local))
        manifest[need.key] = {"url": None, "file": need.local, "sha256": digest}
        return need.local, "local file, used in place"
    dest = to / need.name
    known = manifest.get(need.key, {})
    if dest.is_file() and known.get("sha256") and known.get("file") == str(dest):
        if sha256_of(dest) == known["sha256"]:
            return str(dest), "already present (sha256 verified)"
        print(f"{dest}: sha256 differs from {MANIFEST}; downloading it again", file=sys.stderr)
    try:
        digest = download(need.url, dest)
    except OSError as exc:
        raise FetchError(f"cannot download {need.url} for {need.key}: {exc}") from None
    if need.hash_prefix and not digest.startswith(need.hash_prefix):
        dest.unlink(missing_ok=True)
        raise FetchError(
            f"{need.url}: sha256 {digest[:16]}... does not start with {need.hash_prefix} as "
            f"its file name says: damaged download or a wrong mirror (file removed)"
        )
    manifest[need.key] = {"url": need.url, "file": str(dest), "sha256": digest}
    return str(dest), f"downloaded, sha256 {digest[:16]}..."


def fetch_text_encoder(model: Any, to: Path, manifest: dict[str, Any]) -> str | None:
    """Snapshot of a hub text encoder into DIR/hf/<name>; None when nothing is needed."""
    from lstc.text import BUNDLED, LOCAL_CONFIG_NAMES

    name = model.text_encoder
    local_names = (*LOCAL_CONFIG_NAMES, BUNDLED, "glove")
    if not model.text_pretrained or name in local_names or Path(name).expanduser().is_dir():
        return None
    from huggingface_hub import snapshot_download

    dest = to / "hf" / name.replace("/", "--")
    try:
        path = snapshot_download(repo_id=name, local_dir=str(dest))
    except Exception as exc:  # hub errors come in many types
        raise FetchError(f"cannot download text encoder {name!r} from the hub: {exc}") from None
    manifest["model.text_encoder"] = {"url": f"hf://{name}", "file": str(path), "sha256": None}
    return str(path)


def run(args: argparse.Namespace) -> int:
    import yaml

    from pipelines.config import ConfigError, load_recipe

    try:
        recipe = load_recipe(args.recipe, [])
    except ConfigError as exc:
        print(f"lstc weights fetch: {exc}", file=sys.stderr)
        return 2
    to = args.to.expanduser().resolve()
    to.mkdir(parents=True, exist_ok=True)
    mpath = to / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    overlay: dict[str, Any] = {}
    try:
        for need in needs_of(recipe.model, args):
            path, what = fetch_one(need, to, manifest)
            overlay[need.key.split(".", 1)[1]] = path
            print(f"{need.key}: {path} ({what})")
        text_dir = fetch_text_encoder(recipe.model, to, manifest)
        if text_dir:
            overlay["text_encoder"] = text_dir
            print(f"model.text_encoder: {text_dir}")
    except FetchError as exc:
        print(f"lstc weights fetch: {exc}", file=sys.stderr)
        return 1
    finally:
        mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    doc = {"base": str(Path(args.recipe).expanduser().resolve()), "model": overlay}
    (to / OVERLAY).write_text(
        "# written by lstc weights fetch: the recipe with its pretrained files local\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    print(
        f"wrote {to / OVERLAY} ({len(overlay)} local file(s)); train with: "
        f"lstc train --config {to / OVERLAY}"
    )
    return 0
