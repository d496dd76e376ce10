"""The ``cstm`` preset is the CSTM release (RyanHTR/CSTM, ``models/cstm_model.py``), layer for
layer: parameter counts and shapes derived here by hand from the release's code, its I3D and
GloVe file layouts, and a forward/backward at a small size on CPU.

Release facts used below (read from the release): ``dec_dim = 256``; ``dim_semantic = 512``
(the GRU width of the published checkpoint, README command); ResNet-50 stage widths
``image_dims = 64, 256, 512, 1024, 2048``; I3D stage widths ``video_dims = 64, 192, 480, 832,
1024``; CMAM ``vt`` = ConvBN 3x3 (2D) / Unit3Dpy 3x3x3 (3D) over ``C + 8`` channels, no conv
bias; ``v_key`` = the same block with kernel 1 and no ReLU; ``l_query`` = Conv1d 1x1 without
bias + BatchNorm1d; ``gamma`` = Linear(512, C) + sigmoid; ``ires_trans`` / ``vres_trans`` =
Conv2d 3x3 without bias + BN + ReLU to 256; ``conv_fuse1`` (5) / ``conv_fuse2`` (4) = Conv2d
3x3 512 -> 256 with bias + BN + ReLU; ``conv_mask`` (6) = Conv3x3 + ReLU + Conv3x3 + ReLU +
Conv1x1 -> 1, all with bias; ``txt_encoder`` = GRU(300, 512, bias=False) + LayerNorm(512) +
Tanh.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lstc.backbones import TemporalEncoder, WeightsError
from lstc.cmam import ReleaseCMAM
from lstc.config import ModelConfig
from lstc.glove import GloveGRUEncoder, GloveTokenizer, read_glove, release_words
from lstc.layers import coords_like
from lstc.model import build_model

W = 256  # release dec_dim
D = 512  # release dim_semantic
IMAGE_DIMS = (64, 256, 512, 1024, 2048)
VIDEO_DIMS = (64, 192, 480, 832, 1024)
#: I3D Mixed blocks of the release (pytorch_i3d.py): in channels, branch widths
RELEASE_MIXED = {
    "mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def conv(k: int, cin: int, cout: int, *, bias: bool) -> int:
    """Parameters of a conv with k taps (k = 9 for 3x3, 27 for 3x3x3): k cin cout (+ cout)."""
    return k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight + bias (running statistics are buffers)


def n_params(m: nn.Module, *, trainable: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)


def release_cmam(c: int, taps: int) -> int:
    """vt + v_key + l_query + gamma of the release's CMAM for C channels."""
    vt = conv(taps, c + 8, c, bias=False) + bn(c)
    v_key = conv(1, c, D, bias=False) + bn(D)
    l_query = conv(1, D, D, bias=False) + bn(D)
    gamma = D * c + c
    return vt + v_key + l_query + gamma


def unit3d(cin: int, cout: int, k: int) -> int:
    return conv(k**3, cin, cout, bias=False) + bn(cout)


def mixed(cin: int, w: tuple[int, ...]) -> int:
    b0, b1a, b1b, b2a, b2b, b3 = w
    return (
        unit3d(cin, b0, 1)
        + unit3d(cin, b1a, 1)
        + unit3d(b1a, b1b, 3)
        + unit3d(cin, b2a, 1)
        + unit3d(b2a, b2b, 3)
        + unit3d(cin, b3, 1)
    )


I3D_PARAMS = (
    unit3d(3, 64, 7)  # conv3d_1a_7x7
    + unit3d(64, 64, 1)  # conv3d_2b_1x1
    + unit3d(64, 192, 3)  # conv3d_2c_3x3
    + sum(mixed(cin, w) for cin, w in RELEASE_MIXED.values())
)
RESNET50_NO_FC = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's resnet50 total minus fc
GRU = 3 * (300 * D + D * D)  # three gates, input and hidden weights, bias=False
LAYERNORM = 2 * D
FUSE = conv(9, 2 * W, W, bias=True) + bn(W)
HEAD = 2 * conv(9, W, W, bias=True) + conv(1, W, 1, bias=True)


def proj(c: int) -> int:
    return conv(9, c, W, bias=False) + bn(W)


@pytest.fixture(scope="module")
def meta_models() -> dict[str, nn.Module]:
    """The full-size presets on the meta device (shapes and counts, no memory, no compute)."""
    out = {}
    with torch.device("meta"):
        for name in ("cstm", "lstc_cstm"):
            out[name] = build_model(ModelConfig.preset(name).without_pretrained()).train()
    return out


def test_release_figures_are_what_the_derivation_says():
    # a few totals written out, so that a slip in the helpers shows
    assert I3D_PARAMS == 12_287_264
    assert GRU == 1_247_232
    assert FUSE == 1_180_416 and HEAD == 1_180_417
    assert release_cmam(
        2048, 9
    ) == 9 * 2056 * 2048 + 4096 + 2048 * 512 + 1024 + 512 * 512 + 1024 + (512 * 2048 + 2048)


def test_cstm_preset_parameter_counts_per_module(meta_models):
    m = meta_models["cstm"]
    for k, c in enumerate(IMAGE_DIMS):
        assert n_params(m.spatial.cmams[k]) == release_cmam(c, 9), f"2D CMAM stage {k + 1}"
        assert n_params(m.decoder.proj_s[4 - k]) == proj(c), f"ires_trans stage {k + 1}"
    for k, c in enumerate(VIDEO_DIMS):
        assert n_params(m.temporal.cmams[k]) == release_cmam(c, 27), f"3D CMAM stage {k + 1}"
        assert n_params(m.decoder.proj_t[4 - k]) == proj(c), f"vres_trans stage {k + 1}"
    assert [n_params(f) for f in m.decoder.fuse1] == [FUSE] * 5
    assert [n_params(f) for f in m.decoder.fuse2] == [FUSE] * 4
    assert [n_params(h) for h in m.decoder.heads] == [HEAD] * 6
    assert n_params(m.text.gru) == GRU and n_params(m.text_proj) == LAYERNORM
    assert n_params(m.text, trainable=True) == GRU  # GloVe vectors are frozen
    assert n_params(m.temporal.encoder) == I3D_PARAMS
    assert n_params(m.spatial.encoder) == RESNET50_NO_FC
    assert m.spatial.updates is None and m.temporal.updates is None and m.decoder.lasps is None
    trainable = (
        GRU
        + LAYERNORM
        + RESNET50_NO_FC
        + I3D_PARAMS
        + sum(release_cmam(c, 9) for c in IMAGE_DIMS)
        + sum(release_cmam(c, 27) for c in VIDEO_DIMS)
        + sum(proj(c) for c in IMAGE_DIMS + VIDEO_DIMS)
        + 9 * FUSE
        + 6 * HEAD
    )
    assert n_params(m, trainable=True) == trainable == 184_376_198


def test_cstm_preset_shapes_at_the_release_size(meta_models):
    """320x320, 8 frames: stage maps and the six response maps of the release."""
    m = meta_models["cstm"]
    cfg = m.cfg
    assert (cfg.input_size, cfg.num_frames, cfg.target_index, cfg.max_words) == (
        (320, 320),
        8,
        4,
        20,
    )
    clip = torch.empty(2, 3, 8, 320, 320, device="meta")
    x, shapes = clip, []
    for stage in m.temporal.encoder.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    # conv1a: T 8 -> 4 (stride 2), pools 2a/3a keep T, 4a halves it, 5a halves it again
    assert shapes == [
        (64, 4, 160, 160),
        (192, 4, 80, 80),
        (480, 4, 40, 40),
        (832, 2, 20, 20),
        (1024, 1, 10, 10),
    ]
    x, shapes = clip[:, :, 4], []
    for stage in m.spatial.encoder.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(c, 320 // s, 320 // s) for c, s in zip(IMAGE_DIMS, (2, 4, 8, 16, 32))]
    tok = m.tokenizer(["the man in a red shirt", "a dog"])
    assert tok["input_ids"].shape == (2, 20)
    words, _ = m.encode_text(tok["input_ids"].to("meta"), tok["attention_mask"].to("meta"))
    assert tuple(words.shape) == (2, 20, D)  # GRU-512 over 20 words, LayerNorm, Tanh
    # per stage: CMAM keeps the map, its context V' too, the projection gives 256 channels
    v = torch.empty(2, VIDEO_DIMS[3], 2, 20, 20, device="meta")
    out3, sentence, context = m.temporal.cmams[3](v, words, None)
    assert out3.shape == context.shape == v.shape and tuple(sentence.shape) == (2, D)
    s4 = torch.empty(2, IMAGE_DIMS[3], 20, 20, device="meta")
    assert m.spatial.cmams[3](s4, words, None)[0].shape == s4.shape
    assert tuple(m.decoder.proj_s[1](s4).shape) == (2, W, 20, 20)
    assert tuple(m.decoder.proj_t[1](out3[:, :, 1]).shape) == (2, W, 20, 20)
    fused = torch.empty(2, 2 * W, 20, 20, device="meta")
    assert tuple(m.decoder.fuse2[0](fused).shape) == (2, W, 20, 20)
    assert tuple(m.decoder.heads[1](fused[:, :W]).shape) == (2, 1, 20, 20)
    out = m(clip, tok["input_ids"].to("meta"), tok["attention_mask"].to("meta"))
    assert tuple(out.logits.shape) == (2, 1, 320, 320)
    assert [tuple(a.shape) for a in out.aux_logits] == [(2, 1, s, s) for s in (10, 20, 40, 80, 160)]


def test_lstc_on_the_anchor_differs_exactly_by_cmam_plus_and_lasp(meta_models):
    cstm, lstc = ModelConfig.preset("cstm"), ModelConfig.preset("lstc_cstm")
    changed = {k for k in cstm.to_dict() if cstm.to_dict()[k] != lstc.to_dict()[k]}
    assert changed == {"cmam", "lasp"}
    assert lstc.baseline() == cstm
    a = dict(meta_models["cstm"].named_parameters())
    b = dict(meta_models["lstc_cstm"].named_parameters())
    assert set(a) < set(b)
    assert all(a[k].shape == b[k].shape for k in a)
    extra = {k.split(".")[0] + "." + k.split(".")[1] for k in set(b) - set(a)}
    assert extra == {"spatial.updates", "temporal.updates", "decoder.lasps"}


def test_release_cmam_equals_the_release_formula():
    """ReleaseCMAM against a transcription of the release's CMAM.forward (einsum 'bcn,bct->bnt',
    sum over positions, L2 norm and softmax over all words, V + V'(sigmoid - 0.5))."""
    torch.manual_seed(0)
    for dims in (2, 3):
        m = ReleaseCMAM(channels=6, lang_dim=10, dims=dims).eval()
        v = torch.randn(2, 6, *((3,) if dims == 3 else ()), 5, 4)
        words = torch.randn(2, 7, 10)
        out, sentence, context = m(v, words, torch.ones(2, 7, dtype=torch.bool))
        assert torch.equal(out, v)  # zero-initialised gamma: identity at the start
        nn.init.normal_(m.modulation.weight)
        out, sentence, context = m(v, words, torch.zeros(2, 7, dtype=torch.bool))
        txt = words.transpose(1, 2)  # the release's [B, C, N]
        up = m.context(torch.cat([v, coords_like(v)], 1))
        key = m.key(up).reshape(2, 10, -1)
        query = m.query(txt)
        attn = torch.einsum("bcn,bct->bnt", key, query).sum(1, keepdim=True)
        attn = torch.softmax(torch.nn.functional.normalize(attn, p=2, dim=-1), -1)
        weighted = (attn * txt).sum(-1)
        gamma = m.modulation(weighted).sigmoid().view(2, 6, *([1] * dims))
        torch.testing.assert_close(sentence, weighted)
        torch.testing.assert_close(out, v + up * (gamma - 0.5))
        assert torch.equal(context, up)


# ------------------------------------------------------------------- I3D checkpoint layout


def release_i3d_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of the release's ``i3d_rgb.pth``
    (written from pytorch_i3d.py's ``load_tf_weights``: ``<unit>.conv3d.weight`` and
    ``<unit>.batch3d.{weight,bias,running_mean,running_var}``, plus the classifier)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def unit(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{name}.conv3d.weight"] = torch.randn(cout, cin, k, k, k, generator=g)
        for part in ("weight", "bias", "running_mean"):
            state[f"{name}.batch3d.{part}"] = torch.randn(cout, generator=g)
        state[f"{name}.batch3d.running_var"] = torch.rand(cout, generator=g) + 0.5

    unit("conv3d_1a_7x7", 3, 64, 7)
    unit("conv3d_2b_1x1", 64, 64, 1)
    unit("conv3d_2c_3x3", 64, 192, 3)
    for name, (cin, (b0, b1a, b1b, b2a, b2b, b3)) in RELEASE_MIXED.items():
        unit(f"{name}.branch_0", cin, b0, 1)
        unit(f"{name}.branch_1.0", cin, b1a, 1)
        unit(f"{name}.branch_1.1", b1a, b1b, 3)
        unit(f"{name}.branch_2.0", cin, b2a, 1)
        unit(f"{name}.branch_2.1", b2a, b2b, 3)
        unit(f"{name}.branch_3.1", cin, b3, 1)
    state["conv3d_0c_1x1.conv3d.weight"] = torch.randn(400, 1024, 1, 1, 1, generator=g)
    state["conv3d_0c_1x1.conv3d.bias"] = torch.randn(400, generator=g)
    return state


def test_i3d_loader_reads_the_release_layout(tmp_path):
    state = release_i3d_state()
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "0c" not in k) == (
        I3D_PARAMS
    )
    path = tmp_path / "i3d_rgb.pth"
    torch.save(state, path)
    enc = TemporalEncoder(backbone="i3d", weights=str(path))
    own = enc.state_dict()
    # stage 1 = conv3d_1a_7x7; stage 4's 5th block = mixed_4f; stage 5's 3rd = mixed_5c
    assert torch.equal(own["stages.0.0.conv3d.weight"], state["conv3d_1a_7x7.conv3d.weight"])
    assert torch.equal(
        own["stages.3.5.branch_2.1.batch3d.running_var"],
        state["mixed_4f.branch_2.1.batch3d.running_var"],
    )
    assert torch.equal(
        own["stages.4.2.branch_3.1.conv3d.weight"], state["mixed_5c.branch_3.1.conv3d.weight"]
    )
    # a DataParallel-saved copy ("module." prefix) loads the same
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    enc2 = TemporalEncoder(backbone="i3d", weights=str(tmp_path / "dp.pth"))
    assert all(torch.equal(a, b) for a, b in zip(own.values(), enc2.state_dict().values()))


def test_i3d_loader_errors_name_the_problem(tmp_path):
    state = release_i3d_state()
    del state["mixed_4c.branch_1.1.conv3d.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"mixed_4c\.branch_1\.1\.conv3d\.weight"):
        TemporalEncoder(backbone="i3d", weights=str(tmp_path / "broken.pth"))
    with pytest.raises(WeightsError, match="I3D has no torchvision weights"):
        TemporalEncoder(backbone="i3d", weights="KINETICS400_V1")
    with pytest.raises(FileNotFoundError, match="lstc weights fetch"):
        TemporalEncoder(backbone="i3d", weights=str(tmp_path / "absent.pth"))


# ------------------------------------------------------------------------ GloVe text file


def write_glove(path, rows: dict[str, list[float]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for word, vec in rows.items():
            f.write(word + " " + " ".join(f"{x:g}" for x in vec) + "\n")


def vec(i: int) -> list[float]:
    return [i + j / 1000 for j in range(300)]


def test_release_tokenisation():
    words, mask = release_words("The man, in red.", 8)
    # split on (\W+) keeping separators; ', ' is a word (unknown -> zero); final '.' dropped
    assert words == ["the", "man", ", ", "in", "red", "", "", ""]
    assert mask == [1, 1, 1, 1, 1, 0, 0, 0]
    assert release_words("a b c d e", 3) == (["a", "b", "c"], [1, 1, 1])
    assert release_words("   ", 2) == (["", ""], [1, 0])


def test_glove_reader_and_tokenizer(tmp_path):
    path = tmp_path / "glove.txt"
    write_glove(path, {"the": vec(1), "man": vec(2), ". . .": vec(3), "red": vec(4)})
    with open(path, "a", encoding="utf-8") as f:  # a duplicate keeps the first vector
        f.write("man " + " ".join(["9"] * 300) + "\n")
    words, vectors = read_glove(path)
    assert words == ["the", "man", ". . .", "red"] and vectors.shape == (4, 300)
    assert vectors[1, 7].item() == pytest.approx(2.007)
    assert read_glove(path, limit=2)[0] == ["the", "man"]
    enc = GloveGRUEncoder(hidden=16, word_vectors=str(path))
    tok = GloveTokenizer(vocab=enc.vocab, max_words=6)
    t = tok(["The man, in red.", "red"])
    assert t["input_ids"].tolist() == [[1, 2, 0, 0, 4, 0], [4, 0, 0, 0, 0, 0]]
    assert t["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]
    emb = enc.embed(t["input_ids"])
    torch.testing.assert_close(emb[0, 1], torch.tensor(vec(2)))
    assert emb[0, 2].abs().sum() == 0 and emb[0, 3].abs().sum() == 0  # unknown -> zero
    assert not enc.embed.weight.requires_grad
    bad = tmp_path / "bad.txt"
    bad.write_text("word 1 2 3\n")
    with pytest.raises(ValueError, match="expected a word and 300 numbers"):
        read_glove(bad)
    with pytest.raises(FileNotFoundError, match="model.word_vectors"):
        read_glove(tmp_path / "absent.txt")


def test_glove_vocabulary_travels_in_the_state_dict(tmp_path):
    """A model with GloVe vectors round-trips through torch.save / weights_only load into one
    built without the file (what checkpoint loading does): same ids, same outputs."""
    path = tmp_path / "glove.txt"
    write_glove(path, {w: vec(i) for i, w in enumerate(["the", "dog", "runs", "red"], 1)})
    cfg = ModelConfig.preset("tiny_cstm").replace(
        text_encoder="glove", text_pretrained=True, word_vectors=str(path), max_words=6
    )
    torch.manual_seed(0)
    a = build_model(cfg).eval()
    torch.save(a.state_dict(), tmp_path / "model.pt")
    b = build_model(cfg.without_pretrained()).eval()
    assert b.tokenizer(["the dog"])["input_ids"].tolist() == [[0] * 6]  # empty vocabulary
    b.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    texts = ["The dog runs.", "a red dog"]
    ta, tb = a.tokenizer(texts), b.tokenizer(texts)
    assert (
        ta["input_ids"].tolist()
        == tb["input_ids"].tolist()
        == [
            [1, 2, 3, 0, 0, 0],
            [0, 4, 2, 0, 0, 0],
        ]
    )
    clip = torch.rand(2, 3, cfg.num_frames, *cfg.input_size)
    with torch.no_grad():
        ya = a(clip, ta["input_ids"], ta["attention_mask"]).logits
        yb = b(clip, tb["input_ids"], tb["attention_mask"]).logits
    torch.testing.assert_close(ya, yb)


# --------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("preset", ["cstm", "tiny_lstc_cstm"])
def test_forward_backward_on_cpu(preset):
    """Real weights' shapes, small input (32x32 for the full release, batch 2 for BatchNorm):
    finite outputs, and every trainable parameter receives a gradient; then the release's
    relative threshold in ``predict``."""
    cfg = ModelConfig.preset(preset).without_pretrained()
    if preset == "cstm":
        cfg = cfg.replace(input_size=(32, 32))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    texts = ["the man in a red shirt.", "a dog jumping"]
    tok = model.tokenizer(texts)
    clip = torch.rand(2, 3, cfg.num_frames, *cfg.input_size)
    out = model(clip, tok["input_ids"], tok["attention_mask"])
    h, w = cfg.input_size
    assert out.logits.shape == (2, 1, h, w)
    assert [a.shape[-1] for a in out.aux_logits] == [w // s for s in (32, 16, 8, 4, 2)]
    loss = out.logits.mean() + sum(a.mean() for a in out.aux_logits)
    loss = loss + sum(f.mean() for f in out.lasp_logits)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # the release uses every layer; on it, LSTC's last CMAM+ updates feed LASP's sentence
    assert missing == []
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(clip, tok["input_ids"], tok["attention_mask"]).logits[:, 0])
    mask = model.predict(clip, texts, threshold=0.5, relative=True)
    assert torch.equal(mask, prob > 0.5 * prob.amax(dim=(1, 2), keepdim=True))
    assert mask.flatten(1).any(1).all()  # the maximum itself always passes


def test_model_doc_holds_the_generated_module_table():
    """docs/MODEL.md's module table is benchmarks/model_table.py's output, not typed by hand."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("model_table", root / "benchmarks/model_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = (root / "docs" / "MODEL.md").read_text()
    assert mod.block() in doc, "run: .venv/bin/python benchmarks/model_table.py --write"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in mod.table().splitlines()}
    assert rows["total (trainable)"].split(" | ")[4] == "184,376,198"  # = the derivation above


def test_release_training_settings_are_valid_recipe_overrides():
    """CSTM_TRAINING (batch 4, Adam 5e-4, x0.1 at epoch 8 of 9, BCE pos_weight 1.5, relative
    threshold 0.5) applies to a shipped recipe with the cstm preset."""
    import json
    from pathlib import Path

    from lstc.config import CSTM_TRAINING
    from pipelines.config import load_recipe

    root = Path(__file__).resolve().parents[1]
    overrides = [f"{k}={json.dumps(v)}" for k, v in CSTM_TRAINING.items()]
    r = load_recipe(root / "configs" / "a2d_paper.yaml", ["model.preset=cstm", *overrides])
    assert r.model == ModelConfig.preset("cstm")
    assert (r.data.batch_size, r.optim.name, r.optim.lr, r.train.epochs) == (4, "adam", 5e-4, 9)
    assert (r.schedule.step_epochs, r.schedule.gamma, r.loss.pos_weight) == ((8,), 0.1, 1.5)
    assert (r.eval.threshold_rule, r.eval.threshold) == ("relative", 0.5)
