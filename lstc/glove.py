"""The CSTM release's text encoder: GloVe-300 word vectors, a GRU, LayerNorm, Tanh.

Release (``datasets/word_utils.py`` + ``CSTMModel.txt_encoder``), followed exactly:

* tokenisation: split on ``(\\W+)`` keeping the separators, lower-case, drop empty and
  single-space pieces, drop a final ``"."``, keep at most ``max_words`` (20) pieces, pad with
  the empty word; mask 1 for real pieces, 0 for padding (the release never uses the mask in
  the network);
* word vectors: GloVe 840B 300-d (``glove.840B.300d.txt``); a word that is not in the file
  -- and the padding word -- gets the **zero vector** (torchtext's default, which the
  release relies on). Separators such as ``", "`` are kept as words, so they are zero too;
* ``W = GRU(300 -> H, one layer, no bias)`` over all ``max_words`` positions (padding
  included), then ``tanh(LN(W))`` (in ``lstc.model``).

Ours: the vectors live in the model (a frozen ``nn.Embedding`` whose vocabulary is saved in
the state dict as extra state), so checkpoints are self-contained and ``input_ids`` are ids
into that vocabulary. ``word_vectors_limit`` keeps the first N words of the file (GloVe files
are sorted by frequency; 0 keeps all 2.2 M words of 840B = 2.6 GB of float32 in every
checkpoint). Without a file (``text_pretrained=false``, e.g. before a checkpoint is loaded)
the vocabulary is empty and every word is the zero vector.

GloVe text format: one word per line followed by its 300 values, separated by single spaces;
a few 840B entries contain spaces themselves, so the last 300 fields are the vector and the
rest is the word. Duplicate words keep their first vector.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

GLOVE_DIM = 300
PAD_WORD = ""
SPLIT = re.compile(r"(\W+)")
EXTRA_STATE_FORMAT = "lstc-glove-vocab-1"


def release_words(text: str, max_words: int) -> tuple[list[str], list[int]]:
    """The release's tokenisation: ``(words, mask)``, both `max_words` long."""
    words = [w.lower() for w in SPLIT.split(text.strip()) if len(w) > 0 and w != " "]
    if not words:
        words = [PAD_WORD]
    mask = [1] * len(words)
    if words[-1] == ".":
        words, mask = words[:-1], mask[:-1]
    words, mask = words[:max_words], mask[:max_words]
    pad = max_words - len(words)
    return words + [PAD_WORD] * pad, mask + [0] * pad


def read_glove(path: str | Path, *, limit: int = 0) -> tuple[list[str], torch.Tensor]:
    """Words and vectors ``[V, 300]`` of a GloVe text file (first `limit` words; 0 = all)."""
    import numpy as np

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"GloVe file {str(path)!r} does not exist: download glove.840B.300d.zip from "
            "https://nlp.stanford.edu/projects/glove/, unzip it and set model.word_vectors to "
            "the .txt file (or run `lstc weights fetch`)"
        )
    words: list[str] = []
    rows: list[Any] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) < GLOVE_DIM + 1:
                raise ValueError(
                    f"{str(path)!r} line {lineno}: expected a word and {GLOVE_DIM} numbers, got "
                    f"{len(parts)} fields (is this a GloVe 300-d text file?)"
                )
            word = " ".join(parts[:-GLOVE_DIM])
            if word in seen:
                continue
            try:
                rows.append(np.asarray(parts[-GLOVE_DIM:], dtype=np.float32))
            except ValueError as exc:
                raise ValueError(f"{str(path)!r} line {lineno}: {exc}") from None
            seen.add(word)
            words.append(word)
            if limit and len(words) >= limit:
                break
    if not words:
        raise ValueError(f"GloVe file {str(path)!r} is empty")
    return words, torch.from_numpy(np.stack(rows))


class GloveVocab:
    """Word -> id; id 0 is the padding/unknown word (zero vector). Picklable, shared in place
    between the model's embedding and its tokenizer (a checkpoint load updates both)."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.set_words(words or [])

    def set_words(self, words: list[str]) -> None:
        """`words` are the file's words (ids 1..V); id 0 is reserved."""
        self.words = list(words)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 1

    def id(self, word: str) -> int:
        return self.index.get(word, 0)

    def __getstate__(self) -> dict[str, Any]:
        return {"words": self.words}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.set_words(state["words"])


class GloveTokenizer:
    """``tok(texts) -> {"input_ids", "attention_mask"}`` ``[B, max_words]`` (release rules)."""

    def __init__(self, *, vocab: GloveVocab, max_words: int) -> None:
        self.vocab = vocab
        self.max_words = max_words
        self.name = "glove"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids, masks = [], []
        for text in texts:
            words, mask = release_words(str(text), self.max_words)
            ids.append([self.vocab.id(w) for w in words])
            masks.append(mask)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long).view(len(ids), self.max_words),
            "attention_mask": torch.tensor(masks, dtype=torch.long).view(len(ids), self.max_words),
        }

    def __repr__(self) -> str:
        return f"GloveTokenizer(words={len(self.vocab) - 1}, max_words={self.max_words})"


class GloveEmbedding(nn.Module):
    """Frozen word vectors ``[V+1, 300]`` (row 0 = zero); the vocabulary is extra state.

    A frozen parameter rather than a buffer: DDP broadcasts buffers every step, not
    parameters. Loading a state dict with another vocabulary size resizes it.
    """

    def __init__(self, vocab: GloveVocab, vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vocab = vocab
        weight = torch.zeros(len(vocab), GLOVE_DIM)
        if vectors is not None:
            weight[1:] = vectors
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": EXTRA_STATE_FORMAT, "words": list(self.vocab.words)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("format") != EXTRA_STATE_FORMAT:
            raise ValueError("state dict has no GloVe vocabulary in a known format")
        self.vocab.set_words(list(state["words"]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        incoming = state_dict.get(prefix + "weight")
        if incoming is not None and incoming.shape != self.weight.shape:
            self.weight = nn.Parameter(
                torch.zeros(incoming.shape, dtype=self.weight.dtype, device=self.weight.device),
                requires_grad=False,
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GloveGRUEncoder(nn.Module):
    """``W = GRU(E[ids])`` with frozen GloVe rows ``E``; ``forward -> (W [B, L, H], mask)``.

    GRU: one layer, 300 -> `hidden`, no bias (the release's ``nn.GRU(300, 512, bias=False)``),
    run over every position, padding included, as the release does.
    """

    def __init__(self, *, hidden: int, word_vectors: str | None, limit: int = 0) -> None:
        super().__init__()
        words, vectors = read_glove(word_vectors, limit=limit) if word_vectors else ([], None)
        self.vocab = GloveVocab(words)
        self.embed = GloveEmbedding(self.vocab, vectors)
        self.gru = nn.GRU(GLOVE_DIM, hidden, num_layers=1, bias=False, batch_first=True)
        self.hidden_size = hidden

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        words, _ = self.gru(self.embed(input_ids))
        return words, attention_mask > 0


__all__ = [
    "GLOVE_DIM",
    "GloveEmbedding",
    "GloveGRUEncoder",
    "GloveTokenizer",
    "GloveVocab",
    "read_glove",
    "release_words",
]
