"""Every method on a toy member of every architecture family: the packed artifact rebuilds the
network, every compressible weight is on its codebook, and the size stays near the budget."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from quantbench.data import LanguageModelingTask, blocks, build_task
from quantbench.format import CompressedModel, QuantizedTensor
from quantbench.method import Budget, RunContext, compressible, make_params
from quantbench.methods import available_methods, get_method
from quantbench.models import build_model
from quantbench.training.loop import TrainSettings, seed_everything, train

FAMILIES = {
    "lenet5": {"padding": 2, "width": 0.25},
    "resnet20": {"width": 0.25},
    "vgg16": {"width": 0.0625},
    "vit": {"patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2},
    "transformer_lm": {"decoder_layers": 1, "decoder_embed_dim": 32, "decoder_ffn_embed_dim": 64,
                       "decoder_attention_heads": 2, "dropout": 0.0},
}
FAST = {"epochs": 1, "steps": 2, "calib_samples": 64, "penalties": {"2": 1.0}}
BUDGET_FREE = {"diffq_fixed"}  # a fixed size penalty: its size is an outcome, not a target


def token_task() -> LanguageModelingTask:
    """A periodic token stream with noise: learnable, offline, 12 symbols in fairseq layout."""
    gen = torch.Generator().manual_seed(0)
    stream = 4 + (torch.arange(6000) % 8)
    noise = torch.rand(6000, generator=gen) < 0.1
    stream[noise] = torch.randint(4, 12, (int(noise.sum()),), generator=gen)
    return LanguageModelingTask("tokens", blocks(stream[:5000], 16), blocks(stream[5000:], 16), (16,), 12)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    arch = request.param
    if arch == "transformer_lm":
        pytest.importorskip("fairseq", reason="the lm extra (fairseq-fixed) is not installed")
        task = token_task()
    else:
        task = build_task("digits")
    seed_everything(0)
    kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes, **FAMILIES[arch]}
    ref = build_model(arch, **kwargs)
    train(ref, task, TrainSettings(epochs=2, optimizer="adam", lr=2e-3), 0, torch.device("cpu"), show_progress=False)
    return arch, task, kwargs, ref


def budget_for(method: str, params) -> float | None:
    cls = get_method(method)
    return next((b for b in (2, 1.58, 1) if cls.serves(Budget(b), params)), None)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_compresses_every_family(family, method):
    arch, task, kwargs, ref = family
    cls = get_method(method)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    overrides = {k: v for k, v in FAST.items() if k in fields}
    if method == "lc_scaled":
        overrides["unit_codebook"] = [-1.0, 0.0, 1.0]
    params = make_params(cls.Params, overrides, method)
    bits = budget_for(method, params)
    assert bits is not None, f"{method} serves none of the budgets 1, 1.58, 2"
    ctx = RunContext(task, arch, kwargs, seed=0, show_progress=False)
    packed = CompressedModel.unpack(cls(params).compress(ref, Budget(bits), ctx).pack())
    model = packed.to_dense(build_model(arch, **kwargs))
    packed.verify_on_codebook(model)
    quantized = {n for n, r in packed.records.items() if isinstance(r, QuantizedTensor)}
    linear_like = set(compressible(ref))
    if method in ("gpfq", "msq", "gptq"):  # post-training methods quantize where a Linear/Conv2d owns the weight
        linear_like = {n for n in linear_like if "embed" not in n}
    assert linear_like <= quantized
    stats = packed.stats()
    if method not in BUDGET_FREE:
        assert stats["bpw"] <= bits + 0.3, stats
    metric = task.evaluate(model)[task.metric]
    assert math.isfinite(metric)
