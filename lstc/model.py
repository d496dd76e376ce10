"""The LSTC network: text encoder, two visual streams with CMAM / CMAM+, decoder with LASP.

Data flow for a clip ``X [B, 3, T, H, W]`` in [0, 1] and an expression (input ids, mask):

* words ``W^0 = tanh(LN(W_t Enc(ids)))  [B, L, D]`` (CSTM's text head is LayerNorm + Tanh too)
* spatial stream on the target frame ``X[:, :, target_index]``, temporal stream on the clip;
  per stream, for stages k = 1..5:
  ``V_k = Stage_k(V_{k-1})``; ``V_k <- CMAM_k(V_k, W^0)`` (cmam != none);
  ``U_{k+1} = Update_k(V'_k, U_k)``, ``U_1 = W^0``, with CMAM's context ``V'_k`` (cmam_plus;
  otherwise ``U_{k+1} = U_k``). ``update_feeds="all"`` lets ``CMAM_k`` read ``U_k`` instead of
  ``W^0`` (trained so, the motion words never bound on refer-shapes: docs/MOTION.md §7)
* the temporal stage outputs are cut to their target-aligned time slice
* decoder language: ``W_dec`` = mean of the streams' last updated words ``U_6``; sentence
  ``s = masked_mean(W_dec)``
* decoder (lstc/decoder.py): fusion per stage, LASP between stages, heads per level.

With ``text_encoder="glove"`` (the release's text side) ``W^0 = tanh(LN(GRU(GloVe(ids))))``
with the GRU as wide as ``lang_dim`` and no extra Linear, exactly as the release.
``cmam_style`` / ``decoder_style`` pick the release's CMAM and decoder layers or ours.

`streams` drops one encoder entirely; `cmam` none/cmam/cmam_plus; `lasp` on/off;
`fusion` concat/sum/gated. ``ModelConfig.baseline()`` (concat + CMAM, no CMAM+/LASP) is the
CSTM counterpart of a config: the exact release for ``lstc_cstm``, CSTM-like for ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lstc.backbones import SpatialEncoder, TemporalEncoder, aligned_slice
from lstc.cmam import CMAM, LanguageUpdate, ReleaseCMAM, SentenceContextUpdate, word_queries
from lstc.config import GLOVE_TEXT, NUM_STAGES, ModelConfig
from lstc.decoder import Decoder, ReleaseDecoder
from lstc.glove import GloveGRUEncoder, GloveTokenizer
from lstc.layers import WordMask, masked_mean
from lstc.text import TextEncoder, TextTokenizer


@dataclass
class LSTCOutput:
    """``logits [B, 1, H, W]``; ``aux_logits`` deepest first (strides 32, 16, 8, 4, 2);
    ``lasp_logits``: LASP foreground estimates (deep stage of each LASP), empty when off."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor]
    lasp_logits: list[torch.Tensor] = field(default_factory=list)


class VisualStream(nn.Module):
    """One encoder with its CMAM (and CMAM+ update) after every stage."""

    def __init__(
        self,
        *,
        encoder: nn.Module,
        cmam: str,
        lang_dim: int,
        heads: int,
        cmam_heads: int = 1,
        style: str = "ours",
        dims: int = 2,
        update_attends: str = "visual",
        update_bound: str = "tanh",
        update_feeds: str = "decoder",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        chans = encoder.channels

        def make(c: int) -> nn.Module:
            if style == "release":
                return ReleaseCMAM(channels=c, lang_dim=lang_dim, dims=dims)
            return CMAM(channels=c, lang_dim=lang_dim, heads=cmam_heads)

        self.cmams = nn.ModuleList(make(c) for c in chans) if cmam != "none" else None
        # the last update's words are the decoder's language
        update = LanguageUpdate if update_attends == "visual" else SentenceContextUpdate
        self.updates = (
            nn.ModuleList(
                update(channels=c, lang_dim=lang_dim, heads=heads, bound=update_bound)
                for c in chans
            )
            if cmam == "cmam_plus"
            else None
        )
        # "decoder": every CMAM weighs the expression's own words, the update chain feeds the
        # decoder; "all": each CMAM reads the words updated by the stages before it
        self.cmams_read_updates = update_feeds == "all"

    def forward(
        self, x: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | WordMask
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = []
        if not isinstance(mask, WordMask):
            mask = WordMask.of(mask, words.dtype)
        # CMAMs (ours) that see the same words at every stage: all word projections at once
        fixed_words = self.updates is None or not self.cmams_read_updates
        queries: list[torch.Tensor | None] = [None] * NUM_STAGES
        if fixed_words and self.cmams is not None and isinstance(self.cmams[0], CMAM):
            queries = word_queries(self.cmams, words)
        updated = words
        x = self.encoder.normalize(x)
        for k in range(NUM_STAGES):
            x = self.encoder.stages[k](x)
            if self.cmams is not None:
                read = words if fixed_words else updated
                if queries[k] is None:
                    x, _, context = self.cmams[k](x, read, mask)
                else:
                    x, _, context = self.cmams[k](x, read, mask, queries[k])
                if self.updates is not None:
                    updated = self.updates[k](context, updated, mask)
            feats.append(x)
        return feats, updated


class LSTC(nn.Module):
    """``forward(clip, input_ids, attention_mask) -> LSTCOutput`` (see docs/INTERFACES.md §3)."""

    def __init__(self, *, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.text_encoder == GLOVE_TEXT:
            self.text = GloveGRUEncoder(
                hidden=cfg.lang_dim,
                word_vectors=cfg.word_vectors if cfg.text_pretrained else None,
                limit=cfg.word_vectors_limit,
            )
            self.tokenizer = GloveTokenizer(vocab=self.text.vocab, max_words=cfg.max_words)
            self.text_proj = nn.Sequential(nn.LayerNorm(cfg.lang_dim), nn.Tanh())
        else:
            self.tokenizer = TextTokenizer.for_encoder(
                tokenizer=cfg.tokenizer, text_encoder=cfg.text_encoder, max_words=cfg.max_words
            )
            self.text = TextEncoder(name=cfg.text_encoder, pretrained=cfg.text_pretrained)
            self.text_proj = nn.Sequential(
                nn.Linear(self.text.hidden_size, cfg.lang_dim),
                nn.LayerNorm(cfg.lang_dim),
                nn.Tanh(),
            )
        raw = cfg.input_norm == "none"
        stream_args = {
            "cmam": cfg.cmam,
            "lang_dim": cfg.lang_dim,
            "heads": cfg.update_heads,
            "cmam_heads": cfg.cmam_heads,
            "style": cfg.cmam_style,
            "update_attends": cfg.update_attends,
            "update_bound": cfg.update_bound,
            "update_feeds": cfg.update_feeds,
        }
        self.spatial = (
            VisualStream(
                encoder=SpatialEncoder(
                    backbone=cfg.spatial_backbone,
                    weights=cfg.spatial_weights,
                    tiny_width=cfg.tiny_width,
                    normalize=not raw,
                ),
                dims=2,
                **stream_args,
            )
            if cfg.uses_spatial
            else None
        )
        self.temporal = (
            VisualStream(
                encoder=TemporalEncoder(
                    backbone=cfg.temporal_backbone,
                    weights=cfg.temporal_weights,
                    tiny_width=cfg.tiny_width,
                    normalize=not raw,
                ),
                dims=3,
                **stream_args,
            )
            if cfg.uses_temporal
            else None
        )
        s_ch = self.spatial.encoder.channels if self.spatial else None
        t_ch = self.temporal.encoder.channels if self.temporal else None
        lasp_args = {
            "lasp": cfg.lasp == "on",
            "lang_dim": cfg.lang_dim,
            "lasp_dim": cfg.lasp_dim,
            "lasp_prototypes": cfg.lasp_prototypes,
        }
        self.decoder: nn.Module
        if cfg.decoder_style == "release":
            self.decoder = ReleaseDecoder(
                spatial_channels=s_ch, temporal_channels=t_ch, width=cfg.head_dim, **lasp_args
            )
        else:
            self.decoder = Decoder(
                spatial_channels=s_ch,
                temporal_channels=t_ch,
                dims=cfg.decoder_dims,
                head_dim=cfg.head_dim,
                fusion=cfg.fusion,
                **lasp_args,
            )
        self._apply_freeze()

    # -- freezing ----------------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.cfg.freeze_text:
            mods.append(self.text)
        if self.cfg.freeze_spatial and self.spatial is not None:
            mods.append(self.spatial.encoder)
        if self.cfg.freeze_temporal and self.temporal is not None:
            mods.append(self.temporal.encoder)
        return mods

    def _apply_freeze(self) -> None:
        for m in self.frozen_modules():
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> LSTC:
        """Frozen parts stay in eval mode (fixed BatchNorm statistics, no dropout)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    # -- forward -----------------------------------------------------------------------------
    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self.text(input_ids, attention_mask)
        return self.text_proj(hidden), mask

    def forward(
        self, clip: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> LSTCOutput:
        cfg = self.cfg
        if clip.dim() != 5 or clip.shape[1] != 3 or clip.shape[2] != cfg.num_frames:
            raise ValueError(
                f"clip must be [B, 3, T={cfg.num_frames}, H, W] in [0, 1], got {tuple(clip.shape)}"
            )
        words, mask = self.encode_text(input_ids, attention_mask)
        word_mask = WordMask.of(mask, words.dtype)  # once for every CMAM of both streams
        out_size = (clip.shape[-2], clip.shape[-1])
        spatial_feats = temporal_feats = None
        final_words = []
        if self.spatial is not None:
            spatial_feats, w = self.spatial(clip[:, :, cfg.target_index], words, word_mask)
            final_words.append(w)
        if self.temporal is not None:
            feats, w = self.temporal(clip, words, word_mask)
            temporal_feats = [
                aligned_slice(f, target_index=cfg.target_index, num_frames=cfg.num_frames)
                for f in feats
            ]
            final_words.append(w)
        dec_words = torch.stack(final_words).mean(0)
        sentence = masked_mean(dec_words, mask)
        logits, aux, fg = self.decoder(spatial_feats, temporal_feats, sentence, out_size)
        return LSTCOutput(logits=logits, aux_logits=aux, lasp_logits=fg)

    @torch.no_grad()
    def predict(
        self, clip: torch.Tensor, texts: list[str], threshold: float = 0.5, relative: bool = False
    ) -> torch.Tensor:
        """Boolean masks ``[B, H, W]`` for a clip batch and raw expressions (eval mode).

        ``p > threshold`` with ``p = sigmoid(logits)``; ``relative=True`` is the release's
        rule ``p > threshold * max(p)`` per prediction (threshold 0.5: half the maximum).
        """
        tok = self.tokenizer(texts)
        device = clip.device
        out = self(clip, tok["input_ids"].to(device), tok["attention_mask"].to(device))
        prob = torch.sigmoid(out.logits[:, 0])
        if relative:
            return prob > threshold * prob.amax(dim=(-2, -1), keepdim=True)
        return prob > threshold


def build_model(cfg: ModelConfig) -> LSTC:
    """The LSTC network for `cfg` (weights as the config says; nothing else is downloaded)."""
    return LSTC(cfg=cfg)


def parameter_counts(model: LSTC) -> dict[str, int]:
    """Parameters per top-level part (text, streams' encoders, CMAM, CMAM+, decoder, LASP)."""

    def n(m: nn.Module | None) -> int:
        return sum(p.numel() for p in m.parameters()) if m is not None else 0

    counts = {"text": n(model.text) + n(model.text_proj)}
    for name in ("spatial", "temporal"):
        stream = getattr(model, name)
        counts[f"{name}_encoder"] = n(stream.encoder) if stream else 0
        counts[f"{name}_cmam"] = n(stream.cmams) if stream else 0
        counts[f"{name}_cmam_plus_update"] = n(stream.updates) if stream else 0
    counts["lasp"] = n(model.decoder.lasps)
    counts["decoder_without_lasp"] = n(model.decoder) - counts["lasp"]
    counts["total"] = n(model)
    return counts
