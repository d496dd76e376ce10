"""The module table of docs/MODEL.md: release | ``cstm`` preset | ours (``paper``), with
parameter counts counted on the built networks (meta device: no memory, nothing downloaded).

    .venv/bin/python benchmarks/model_table.py            # print the table
    .venv/bin/python benchmarks/model_table.py --write    # replace it in docs/MODEL.md

tests/test_cstm_exact.py checks that docs/MODEL.md holds exactly this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN = "<!-- module-table:begin (benchmarks/model_table.py --write) -->"
END = "<!-- module-table:end -->"
PRESETS = ("cstm", "lstc_cstm", "paper")

#: module -> (release, the cstm preset, ours in the paper preset)
ROWS: dict[str, tuple[str, str, str]] = {
    "text": (
        "GloVe 840B-300 + GRU(300→512, no bias) + LayerNorm + Tanh, 20 words",
        "same (`lstc/glove.py`; GloVe frozen, 400k most frequent words kept)",
        "bert-base-uncased + Linear→256 + LayerNorm + Tanh",
    ),
    "spatial encoder": (
        "ResNet-50, ImageNet (torchvision V1 weights), target frame, no input normalisation",
        "same (`spatial_weights: IMAGENET1K_V1`, `input_norm: none`)",
        "ResNet-101 (DEFAULT = V2 weights), ImageNet normalisation",
    ),
    "temporal encoder": (
        "I3D Inception-v1, Kinetics-400 (`i3d_rgb.pth`), 8 frames every 2nd",
        "same (`lstc/i3d.py`, release key layout)",
        "torchvision S3D (Kinetics-400)",
    ),
    "CMAM, 2D (5)": (
        "ConvBN 3×3 over [V; coords8], key ConvBN 1×1, query Conv1d+BN, no padding mask",
        "same (`ReleaseCMAM`)",
        "1×1 conv + GN context, padding masked, temperature",
    ),
    "CMAM, 3D (5)": (
        "Unit3D 3×3×3 over [V; coords8], rest as 2D",
        "same (`ReleaseCMAM`, dims=3)",
        "1×1 conv + GN context",
    ),
    "CMAM+ updates (10)": ("—", "— (`lstc_cstm`: ours)", "ours"),
    "stage projections (10)": (
        "Conv 3×3 → 256 + BN + ReLU per stage and stream",
        "same",
        "Conv 1×1 → 256…64 + GN + ReLU",
    ),
    "fusion convs (9)": (
        "concat + Conv 3×3 + BN + ReLU at every level, then concat with the upsampled deeper "
        "level + Conv 3×3 (two per level)",
        "same (`ReleaseDecoder`)",
        "concat + Conv 3×3 + GN, sum merge + Conv 3×3, stride-1 conv",
    ),
    "LASP (4)": ("—", "— (`lstc_cstm`: ours)", "ours"),
    "mask heads (6)": (
        "Conv 3×3 − ReLU − Conv 3×3 − ReLU − Conv 1×1 at 256, strides 32…1",
        "same",
        "Conv 1×1 per level",
    ),
}


def _count(m) -> int:  # type: ignore[no-untyped-def]
    return sum(p.numel() for p in m.parameters() if p.requires_grad) if m is not None else 0


def counts(preset: str) -> dict[str, int]:
    """Trainable parameters per table row for `preset` (built on the meta device)."""
    import torch

    from lstc.config import ModelConfig
    from lstc.model import build_model

    with torch.device("meta"):
        m = build_model(ModelConfig.preset(preset).without_pretrained())
    dec = m.decoder
    if hasattr(dec, "fuse1"):  # the release decoder
        proj = _count(dec.proj_s) + _count(dec.proj_t)
        fusion = _count(dec.fuse1) + _count(dec.fuse2)
    else:
        proj = sum(_count(f.proj_s) + _count(f.proj_t) for f in dec.fusions)
        fusion = sum(_count(f.fuse) + _count(f.gate) for f in dec.fusions)
        fusion += _count(dec.reduces) + _count(dec.merges)
    out = {
        "text": _count(m.text) + _count(m.text_proj),
        "spatial encoder": _count(m.spatial.encoder),
        "temporal encoder": _count(m.temporal.encoder),
        "CMAM, 2D (5)": _count(m.spatial.cmams),
        "CMAM, 3D (5)": _count(m.temporal.cmams),
        "CMAM+ updates (10)": _count(m.spatial.updates) + _count(m.temporal.updates),
        "stage projections (10)": proj,
        "fusion convs (9)": fusion,
        "LASP (4)": _count(dec.lasps),
        "mask heads (6)": _count(dec.heads),
    }
    total = _count(m)
    if sum(out.values()) != total:
        raise RuntimeError(f"{preset}: rows add up to {sum(out.values())}, model has {total}")
    out["total (trainable)"] = total
    return out


def table() -> str:
    """The markdown table (rows of ROWS, counts of PRESETS)."""
    c = {p: counts(p) for p in PRESETS}
    head = (
        "| module | release (CSTM) | `cstm` preset | ours (`paper` preset) "
        "| params `cstm` | params `lstc_cstm` | params `paper` |\n"
        "|---|---|---|---|---:|---:|---:|\n"
    )
    lines = []
    for key in [*ROWS, "total (trainable)"]:
        rel, cstm, ours = ROWS.get(key, ("", "", ""))
        nums = " | ".join(f"{c[p][key]:,}" for p in PRESETS)
        lines.append(f"| {key} | {rel} | {cstm} | {ours} | {nums} |")
    return head + "\n".join(lines) + "\n"


def block() -> str:
    return f"{BEGIN}\n{table()}{END}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="replace the table in docs/MODEL.md")
    args = p.parse_args()
    if not args.write:
        print(table(), end="")
        return
    doc = ROOT / "docs" / "MODEL.md"
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} block to replace")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + block() + text[stop:])
    print(f"wrote the module table into {doc}")


if __name__ == "__main__":
    main()
