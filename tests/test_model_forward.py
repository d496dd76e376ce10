"""Tiny-config model tests on CPU (transformers style): shapes, loss, gradients, identities."""

from __future__ import annotations

import itertools

import pytest
import torch

from lstc.cmam import CMAM, LanguageUpdate, SentenceContextUpdate
from lstc.config import LossConfig, ModelConfig
from lstc.lasp import LASP
from lstc.losses import SegmentationLoss
from lstc.model import LSTC, LSTCOutput, build_model, parameter_counts
from lstc.text import TextTokenizer

SIZE = 32
TEXTS = ["the red square moving to the left", "a blue circle"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**changes) -> ModelConfig:
    return ModelConfig.preset("tiny").replace(input_size=(SIZE, SIZE), **changes)


def make(cfg: ModelConfig, seed: int = 0) -> LSTC:
    torch.manual_seed(seed)
    return build_model(cfg)


def inputs(model: LSTC, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    h, w = cfg.input_size
    clip = torch.rand(batch, 3, cfg.num_frames, h, w, generator=g)
    tok = model.tokenizer(TEXTS[:batch])
    return clip, tok["input_ids"], tok["attention_mask"]


def run(model: LSTC, *args) -> LSTCOutput:
    return model(*args)


SWITCHES = list(
    itertools.product(("both", "spatial", "temporal"), ("none", "cmam", "cmam_plus"), ("on", "off"))
)


@pytest.mark.parametrize(("streams", "cmam", "lasp"), SWITCHES)
@pytest.mark.parametrize("fusion", ["concat", "sum", "gated"])
def test_output_shapes_for_every_switch(streams, cmam, lasp, fusion):
    if streams != "both" and fusion != "concat":
        pytest.skip("fusion only matters with both streams")
    model = make(tiny(streams=streams, cmam=cmam, lasp=lasp, fusion=fusion))
    out = run(model, *inputs(model))
    assert out.logits.shape == (2, 1, SIZE, SIZE)
    strides = (32, 16, 8, 4, 2)
    assert [tuple(a.shape) for a in out.aux_logits] == [
        (2, 1, SIZE // s, SIZE // s) for s in strides
    ]
    assert len(out.lasp_logits) == (4 if lasp == "on" else 0)
    assert torch.isfinite(out.logits).all()
    assert (model.spatial is None) == (streams == "temporal")
    assert (model.temporal is None) == (streams == "spatial")


def test_non_square_and_unusual_input_size():
    model = make(tiny())
    clip = torch.rand(1, 3, 4, 48, 80)
    tok = model.tokenizer(TEXTS[:1])
    out = model(clip, tok["input_ids"], tok["attention_mask"])
    assert out.logits.shape == (1, 1, 48, 80)


def test_wrong_clip_shape_is_a_clear_error():
    model = make(tiny())
    _, ids, mask = inputs(model)
    with pytest.raises(ValueError, match="clip must be"):
        model(torch.rand(2, 3, 7, SIZE, SIZE), ids, mask)


def loss_of(model: LSTC, seed: int = 2) -> torch.Tensor:
    clip, ids, mask = inputs(model)
    target = (
        torch.rand(2, 1, *model.cfg.input_size, generator=torch.Generator().manual_seed(seed)) > 0.7
    ).float()
    loss, parts = SegmentationLoss(LossConfig())(model(clip, ids, mask), target)
    assert torch.isfinite(loss) and set(parts) == {"bce", "dice"}
    return loss


@pytest.mark.parametrize(
    ("preset", "cmam_heads"), [("tiny", 1), ("tiny_cstm_baseline", 1), ("tiny_cstm_baseline", 4)]
)
def test_loss_is_finite_and_backward_reaches_every_trainable_parameter(preset, cmam_heads):
    # 64 px: at 32 px the deepest stage is 1x1 and attention over one position has no gradient
    cfg = ModelConfig.preset(preset).replace(input_size=(64, 64), cmam_heads=cmam_heads)
    model = make(cfg)
    model.train()
    # zero-initialised gates block gradients to their inputs at step 0: take two steps first
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    opt.zero_grad()
    loss_of(model).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    silent = [n for n, p in model.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert not silent, f"zero gradient for {silent}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_frozen_parts_get_no_gradient_and_stay_in_eval_mode():
    model = make(tiny(freeze_text=True, freeze_spatial=True))
    model.train()
    assert not model.text.training and not model.spatial.encoder.training
    assert model.temporal.encoder.training and model.decoder.training
    loss_of(model).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("text.", "spatial.encoder."))
        assert (p.grad is None) == frozen, name
        assert p.requires_grad != frozen, name


def test_cmam_modules_start_as_identity():
    torch.manual_seed(0)
    words = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for v in (torch.randn(2, 12, 8, 8), torch.randn(2, 12, 3, 8, 8)):
        out, sentence, context = CMAM(channels=12, lang_dim=16)(v, words, mask)
        torch.testing.assert_close(out, v)
        assert sentence.shape == (2, 16) and context.shape == v.shape
        upd = LanguageUpdate(channels=12, lang_dim=16, heads=2, pool=4)(context, words, mask)
        torch.testing.assert_close(upd, words)
        upd = SentenceContextUpdate(channels=12, lang_dim=16, heads=2)(context, words, mask)
        torch.testing.assert_close(upd, words)
    deep, shallow = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 8, 8)
    out, phi = LASP(deep_ch=8, shallow_ch=6, lang_dim=16, dim=8, prototypes=3)(
        deep, shallow, torch.randn(2, 16)
    )
    torch.testing.assert_close(out, shallow)
    assert phi.shape == (2, 1, 4, 4)


def test_sentence_context_update_matches_its_equations_and_ignores_padding():
    """``update_attends="words"``: w_i + tanh(W_o sum_j softmax_j((W_q x_i + g) . W_k x_j /
    sqrt(d_h)) W_v x_j) over real words j, written out per sample, head and word with plain
    loops; with ``update_bound="none"`` the same without the tanh."""
    torch.manual_seed(1)
    heads, d, c = 2, 8, 6
    upd = SentenceContextUpdate(channels=c, lang_dim=d, heads=heads)
    free = SentenceContextUpdate(channels=c, lang_dim=d, heads=heads, bound="none")
    with torch.no_grad():
        upd.out.weight.normal_()
        upd.out.bias.normal_()
    free.load_state_dict(upd.state_dict())
    words = torch.randn(2, 4, d)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    context = torch.randn(2, c, 3, 5, 5)
    with torch.no_grad():
        got = upd(context, words, mask)
        unbounded = free(context, words, mask)

    dh = d // heads
    w_q, w_k, w_v = upd.qkv.weight.split(d)
    b_q, b_k, b_v = upd.qkv.bias.split(d)
    with torch.no_grad():  # the reference, written out
        expected, residual = torch.empty_like(words), torch.empty_like(words)
        for b in range(2):
            g = upd.visual.weight @ context[b].flatten(1).mean(-1) + upd.visual.bias
            x = torch.nn.functional.layer_norm(words[b], (d,), upd.norm.weight, upd.norm.bias)
            real = [j for j in range(4) if mask[b, j]]
            for i in range(4):
                ctx = []
                for h in range(heads):
                    sl = slice(h * dh, (h + 1) * dh)
                    q = (w_q @ x[i] + b_q)[sl] + g[sl]
                    keys = [(w_k @ x[j] + b_k)[sl] for j in real]
                    vals = [(w_v @ x[j] + b_v)[sl] for j in real]
                    a = torch.softmax(torch.stack([q @ k / dh**0.5 for k in keys]), 0)
                    ctx.append(sum(aj * vj for aj, vj in zip(a, vals, strict=True)))
                residual[b, i] = upd.out.weight @ torch.cat(ctx) + upd.out.bias
                expected[b, i] = words[b, i] + torch.tanh(residual[b, i])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unbounded, words + residual, rtol=1e-5, atol=1e-5)
    assert float(residual.abs().max()) > 1.5  # the bound really acts here
    assert float((got - words).abs().max()) < 1.0

    # padding words are never keys: changing them leaves the real words' update unchanged
    other = words.clone()
    other[0, 2:] = torch.randn(2, d) * 10
    torch.testing.assert_close(upd(context, other, mask)[0, :2], got[0, :2])


def test_full_model_at_init_equals_model_without_cmam_cmamplus_lasp():
    model = make(tiny()).eval()
    args = inputs(model)
    with torch.no_grad():
        full = model(*args).logits
        for stream in (model.spatial, model.temporal):
            stream.cmams, stream.updates = None, None
        model.decoder.lasps = None
        bare = model(*args).logits
    torch.testing.assert_close(full, bare)


@pytest.mark.parametrize("feeds", ["decoder", "all"])
def test_cmam_plus_updates_feed_the_decoder_or_every_later_cmam(feeds):
    """``update_feeds="decoder"``: every CMAM weighs the expression's own words, so the
    streams' features equal those of the same weights without updates, and only the words
    handed to the decoder change; ``"all"``: the later CMAMs read the updated words."""
    model = make(tiny(update_feeds=feeds)).eval()
    perturb_zero_inits(model)
    clip, ids, attn = inputs(model)
    with torch.no_grad():
        words, mask = model.encode_text(ids, attn)
        for stream, x in (
            (model.spatial, clip[:, :, model.cfg.target_index]),
            (model.temporal, clip),
        ):
            feats, updated = stream(x, words, mask)
            updates, stream.updates = stream.updates, None
            plain, same = stream(x, words, mask)
            stream.updates = updates
            assert same is words and not torch.allclose(updated, words)
            torch.testing.assert_close(feats[0], plain[0])  # the first CMAM reads W^0 in both
            deep_equal = all(torch.equal(a, b) for a, b in zip(feats, plain, strict=True))
            assert deep_equal == (feeds == "decoder")


def perturb_zero_inits(model: LSTC) -> None:
    """Give every all-zero parameter random values so the language really flows."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and float(p.abs().sum()) == 0.0:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("cmam", ["cmam", "cmam_plus"])
@pytest.mark.parametrize("lasp", ["on", "off"])
@pytest.mark.parametrize("cmam_heads", [1, 4])
def test_padding_words_do_not_change_the_output(cmam, lasp, cmam_heads):
    model = make(tiny(cmam=cmam, lasp=lasp, cmam_heads=cmam_heads)).eval()
    perturb_zero_inits(model)
    clip, ids, mask = inputs(model)
    long_tok = TextTokenizer(name=model.tokenizer.name, max_words=20)(TEXTS)
    assert long_tok["input_ids"].shape[1] == 20 and ids.shape[1] == 12
    garbage = long_tok["input_ids"].clone()
    garbage[long_tok["attention_mask"] == 0] = 1234  # any id at padded positions
    with torch.no_grad():
        short = model(clip, ids, mask).logits
        long = model(clip, garbage, long_tok["attention_mask"]).logits
        other = model(clip, ids.flip(0), mask.flip(0)).logits
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-4)
    # and the language matters once the zero-initialised gates are open
    assert not torch.allclose(short, other, atol=1e-4)


def test_tokenizer_gives_fixed_shape_and_pickles():
    import pickle

    tok = TextTokenizer.for_encoder(tokenizer="auto", text_encoder="tiny", max_words=12)
    enc = tok(["a", "the dog jumping over the fence " * 5])
    assert enc["input_ids"].shape == (2, 12) and enc["input_ids"].dtype == torch.long
    assert enc["attention_mask"][0].sum() == 3 and enc["attention_mask"][1].sum() == 12
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(["a"])["input_ids"], tok(["a"])["input_ids"])


def test_parameter_counts_cover_the_model():
    model = make(tiny())
    counts = parameter_counts(model)
    parts = sum(v for k, v in counts.items() if k != "total")
    assert parts == counts["total"] > 0
    assert counts["lasp"] > 0 and counts["spatial_cmam_plus_update"] > 0
    base = parameter_counts(make(tiny().baseline()))
    assert base["lasp"] == 0 and base["spatial_cmam_plus_update"] == 0


def test_loss_levels_and_perfect_prediction():
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1
    perfect = LSTCOutput(
        logits=(target * 2 - 1) * 20,
        aux_logits=[
            torch.nn.functional.interpolate((target * 2 - 1) * 20, size=(s, s))
            for s in (1, 2, 4, 8, 16)
        ],
    )
    wrong = LSTCOutput(logits=-perfect.logits, aux_logits=[-a for a in perfect.aux_logits])
    loss_fn = SegmentationLoss(LossConfig())
    good, parts = loss_fn(perfect, target)
    bad, _ = loss_fn(wrong, target)
    assert good < 0.05 * bad and float(parts["dice"]) < 0.1
    with pytest.raises(ValueError, match="level_weights"):
        SegmentationLoss(LossConfig(level_weights=(1.0, 1.0)))(perfect, target)
    only_main, _ = SegmentationLoss(LossConfig(level_weights=()))(wrong, target)
    assert only_main < bad


def test_lasp_foreground_supervision_is_optional():
    target = torch.zeros(1, 1, 32, 32)
    target[:, :, :16] = 1
    out = LSTCOutput(
        logits=torch.zeros(1, 1, 32, 32), aux_logits=[], lasp_logits=[torch.zeros(1, 1, 4, 4)]
    )
    plain, _ = SegmentationLoss(LossConfig(level_weights=()))(out, target)
    supervised, _ = SegmentationLoss(LossConfig(level_weights=(), lasp_weight=0.5))(out, target)
    assert supervised > plain
