"""fairseq's decoder-only ``TransformerLanguageModel`` (the DiffQ paper's language model).

Needs the ``lm`` extra (``pip install -e ".[lm]"``: the ``fairseq-fixed`` distribution, the fairseq
0.12 line that installs and imports on Python 3.11). ``preset`` is any fairseq LM architecture
(``transformer_lm`` base, ``transformer_lm_wiki103`` = the Wikitext-103 adaptive-input model of
Baevski & Auli, 16 layers, 247M parameters); the size keywords override it.

The task supplies ``input_shape = (tokens_per_sample,)`` and ``num_classes`` = the vocabulary
size in fairseq ``Dictionary`` layout (0 bos, 1 pad, 2 eos, 3 unk, then the symbols). The module
returns log-probabilities (B, T, V), so adaptive softmax and plain outputs look the same to the
loss, ``cross_entropy`` over the last axis (log_softmax of log-probabilities is the identity).
"""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import torch
from torch import nn

from quantbench.registry import register_model

LM_EXTRA_HINT = 'the fairseq language model needs the "lm" extra: pip install -e ".[lm]" (fairseq-fixed)'


def _fairseq():
    try:
        import fairseq.models.transformer_lm as tlm
        from fairseq.data import Dictionary
        from fairseq.models import ARCH_CONFIG_REGISTRY
    except ImportError as e:
        raise ImportError(f"{LM_EXTRA_HINT} ({e})") from e
    return tlm, Dictionary, ARCH_CONFIG_REGISTRY


class FairseqLM(nn.Module):
    """Wraps a fairseq LM so ``forward(tokens) -> log-probabilities``.

    fairseq's attention normally hands its projection weights straight to
    ``F.multi_head_attention_forward``; here it is switched to its own path, which calls the
    ``q/k/v/out_proj`` Linear modules, so methods that hook layer inputs (GPFQ) see them.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        for module in lm.modules():
            if hasattr(module, "_set_skip_embed_dim_check"):
                module._set_skip_embed_dim_check()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.lm(tokens)
        asm = getattr(self.lm.decoder, "adaptive_softmax", None)
        if asm is None:
            return torch.log_softmax(out[0].float(), dim=-1)
        return adaptive_log_probs(asm, out[0])


def adaptive_log_probs(asm: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """log p(w) of every word under fairseq's ``AdaptiveSoftmax`` (Grave et al.), differentiably
    (fairseq's ``get_log_prob`` writes in place and cannot be trained through):
    head words: log_softmax(head)[w]; word w of tail cluster i: log_softmax(head)[c0 + i] +
    log_softmax(tail_i)[w - cutoff_i]."""
    x = asm.dropout_module(features.reshape(-1, features.shape[-1]))
    head = torch.log_softmax(asm.head(x).float(), dim=-1)
    c0 = asm.cutoff[0]
    parts = [head[:, :c0]]
    for i, tail in enumerate(asm.tail):
        parts.append(torch.log_softmax(tail(x).float(), dim=-1) + head[:, c0 + i, None])
    return torch.cat(parts, dim=-1).reshape(*features.shape[:-1], -1)


@register_model
def transformer_lm(input_shape: tuple[int, ...], num_classes: int, preset: str = "transformer_lm",
                   decoder_layers: int | None = None, decoder_embed_dim: int | None = None,
                   decoder_ffn_embed_dim: int | None = None, decoder_attention_heads: int | None = None,
                   dropout: float | None = None, share_decoder_input_output_embed: bool | None = None) -> FairseqLM:
    """A fairseq ``TransformerLanguageModel`` sized by ``preset`` and the overrides."""
    tlm, Dictionary, archs = _fairseq()
    if preset not in archs or not preset.startswith("transformer_lm"):
        known = sorted(a for a in archs if a.startswith("transformer_lm"))
        raise ValueError(f"transformer_lm: unknown preset {preset!r}; fairseq LM architectures: {known}")
    dictionary = Dictionary()
    for i in range(num_classes - len(dictionary)):
        dictionary.add_symbol(f"<{i}>")
    if len(dictionary) != num_classes:
        raise ValueError(f"transformer_lm: vocabulary of {num_classes} is smaller than fairseq's 4 special symbols")
    overrides = {"decoder_layers": decoder_layers, "decoder_embed_dim": decoder_embed_dim,
                 "decoder_ffn_embed_dim": decoder_ffn_embed_dim, "decoder_attention_heads": decoder_attention_heads,
                 "dropout": dropout, "share_decoder_input_output_embed": share_decoder_input_output_embed}
    args = argparse.Namespace(**{k: v for k, v in overrides.items() if v is not None})
    if decoder_embed_dim is not None:  # keep the input/output dims tied to the width unless the preset says else
        args.decoder_input_dim = args.decoder_output_dim = decoder_embed_dim
    archs[preset](args)  # fills the preset's values for everything not given
    for field in dataclasses.fields(tlm.TransformerLanguageModelConfig):  # then the dataclass defaults
        if not hasattr(args, field.name):
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            setattr(args, field.name, default)
    args.tokens_per_sample = args.max_target_positions = int(input_shape[0])
    args.tpu = False
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return FairseqLM(tlm.TransformerLanguageModel.build_model(args, task))
