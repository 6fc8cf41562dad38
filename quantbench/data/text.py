"""Language-modelling token streams: vocabulary, encoding and blocks.

Language-modelling tasks use fairseq's ``Dictionary`` layout (0 ``<s>``, 1 ``<pad>``,
2 ``</s>``, 3 ``<unk>``, then the symbols), cut the token stream into blocks of
``tokens_per_sample`` and report perplexity (lower is better).
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from quantbench.data.tasks import LanguageModelingTask

SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary's first four indices
UNK = 3


def build_vocabulary(train_tokens: list[str]) -> tuple[str, ...]:
    """fairseq layout: the four specials, then train symbols by descending count (ties by symbol)."""
    counts = collections.Counter(train_tokens)
    symbols = sorted((s for s in counts if s not in SPECIAL_SYMBOLS), key=lambda s: (-counts[s], s))
    return SPECIAL_SYMBOLS + tuple(symbols)


def encode(tokens: list[str], vocabulary: tuple[str, ...]) -> torch.Tensor:
    index = {s: i for i, s in enumerate(vocabulary)}
    index.setdefault("<unk>", UNK)
    return torch.tensor([index.get(t, UNK) for t in tokens], dtype=torch.long)


def blocks(stream: torch.Tensor, length: int, max_tokens: int | None = None) -> TensorDataset:
    """Non-overlapping (input, next-token target) blocks of ``length`` tokens from ``stream``."""
    if max_tokens is not None:
        stream = stream[: max_tokens + 1]
    n = (stream.numel() - 1) // length
    if n < 1:
        raise ValueError(f"a stream of {stream.numel()} tokens holds no block of {length}")
    x = stream[: n * length].view(n, length)
    y = stream[1: n * length + 1].view(n, length)
    return TensorDataset(x, y)


def _lm_task(name: str, train: list[str], test: list[str], tokens_per_sample: int,
             max_train_tokens: int | None) -> LanguageModelingTask:
    vocab = build_vocabulary(train)
    return LanguageModelingTask(name=name, train=blocks(encode(train, vocab), tokens_per_sample, max_train_tokens),
                                test=blocks(encode(test, vocab), tokens_per_sample), input_shape=(tokens_per_sample,),
                                num_classes=len(vocab), vocabulary=vocab)



def read_wikitext(path: Path) -> list[str]:
    """Whitespace tokens of every line plus ``</s>`` per line (fairseq's preprocessing)."""
    out: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            out.extend(line.split())
            out.append("</s>")
    return out

