"""Architectures: sizes against the published parameter counts, the option-A shortcut by hand,
input shapes, and the fairseq extra's error."""

from __future__ import annotations

import builtins

import pytest
import torch
import torch.nn.functional as F

from quantbench.models import available_models, build_model
from quantbench.models.resnet import BasicBlock

# published parameter counts: He et al. 2016 (Table 6), torchvision's model docs, Zagoruyko &
# Komodakis 2016, Touvron et al. 2021, Howard et al. 2017 (4.2M), Baevski & Auli 2019 (247M)
PUBLISHED = [
    ("resnet20", (3, 32, 32), 10, {}, 0.27e6, 0.02),
    ("resnet32", (3, 32, 32), 10, {}, 0.46e6, 0.02),
    ("resnet44", (3, 32, 32), 10, {}, 0.66e6, 0.02),
    ("resnet56", (3, 32, 32), 10, {}, 0.85e6, 0.02),
    ("resnet110", (3, 32, 32), 10, {}, 1.7e6, 0.03),
    ("wrn", (3, 32, 32), 10, {}, 36.5e6, 0.01),
    ("resnet18", (3, 224, 224), 1000, {}, 11_689_512, 0),
    ("resnet50", (3, 224, 224), 1000, {}, 25_557_032, 0),
    ("vgg16", (3, 224, 224), 1000, {"batch_norm": False}, 138_357_544, 0),
    ("vgg16", (3, 224, 224), 1000, {}, 138_365_992, 0),  # vgg16_bn
    ("alexnet", (3, 224, 224), 1000, {}, 61_100_840, 0),
    ("vit", (3, 224, 224), 1000, {"model": "deit_base_patch16_224"}, 86.6e6, 0.01),
    ("mobilenet_v1", (3, 224, 224), 1000, {}, 4.2e6, 0.02),
]


@pytest.mark.parametrize("name,shape,classes,kwargs,count,rtol", PUBLISHED)
def test_paper_size_members_have_the_published_parameter_counts(name, shape, classes, kwargs, count, rtol):
    model = build_model(name, shape, classes, **kwargs)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(count, rel=rtol, abs=0.5)


def test_wikitext103_language_model_has_247m_parameters():
    pytest.importorskip("fairseq", reason="the lm extra (fairseq-fixed) is not installed")
    model = build_model("transformer_lm", (16,), 267744, preset="transformer_lm_wiki103")
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(247e6, rel=0.01)
    assert len(model.lm.decoder.layers) == 16


@pytest.mark.parametrize("name,kwargs", [
    ("lenet300", {}), ("lenet5", {"padding": 2}), ("resnet20", {"width": 0.25}), ("resnet110", {"width": 0.25}),
    ("wrn", {"depth": 10, "widen": 1}), ("resnet18", {}), ("vgg16", {"width": 0.125}),
    ("vit", {"patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2}),
])
def test_toy_members_build_on_small_inputs(name, kwargs):
    for shape in [(1, 8, 8), (3, 32, 32)]:
        model = build_model(name, shape, 7, **kwargs)
        assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_every_registered_model_is_covered_here():
    covered = {row[0] for row in PUBLISHED} | {"lenet300", "lenet5", "transformer_lm"}
    assert set(available_models()) == covered


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(2, 4, stride=2).eval()
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in block.modules())
    for m in (block.conv1, block.conv2):  # zero the residual branch: the output is relu(shortcut)
        torch.nn.init.zeros_(m.weight)
    x = torch.randn(1, 2, 4, 4)
    expected = torch.zeros(1, 4, 2, 2)
    expected[:, 1:3] = x[:, :, ::2, ::2]  # channels padded by 1 on each side
    bn_shift = block.bn2(torch.zeros(1, 4, 2, 2))  # eval BN of zeros (running stats at init: 0)
    assert torch.allclose(block(x), F.relu(expected + bn_shift))


def test_cifar_resnet_depths_and_vgg16_layer_counts():
    for depth in (20, 32, 44, 56, 110):
        model = build_model(f"resnet{depth}", (3, 32, 32), 10)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) + 1 == depth  # 6n+1 convs + 1 linear layer
    vgg = build_model("vgg16", (3, 32, 32), 10)
    layers = [m for m in vgg.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 14  # 13 conv + the CIFAR variant's single classifier layer
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in vgg.modules()) == 5


def test_vit_takes_the_task_image_and_patch_size():
    model = build_model("vit", (1, 8, 8), 10, patch_size=2, embed_dim=16, depth=1, num_heads=2)
    assert model.patch_embed.num_patches == 16
    with pytest.raises(Exception, match="vit_\\* or deit_\\*"):
        build_model("vit", (1, 8, 8), 10, model="resnet50")


def test_fairseq_arch_without_the_extra_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_fairseq(name, *args, **kwargs):
        if name.startswith("fairseq"):
            raise ImportError("No module named 'fairseq'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fairseq)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[lm\]"'):
        build_model("transformer_lm", (16,), 100)


def test_fairseq_lm_is_causal_and_returns_log_probabilities():
    pytest.importorskip("fairseq", reason="the lm extra (fairseq-fixed) is not installed")
    torch.manual_seed(0)
    model = build_model("transformer_lm", (12,), 20, decoder_layers=1, decoder_embed_dim=16,
                        decoder_ffn_embed_dim=32, decoder_attention_heads=2, dropout=0.0).eval()
    tokens = torch.randint(4, 20, (2, 12))
    out = model(tokens)
    assert out.shape == (2, 12, 20)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 12), atol=1e-5)
    changed = tokens.clone()
    changed[:, 8:] = 5
    assert torch.allclose(model(changed)[:, :8], out[:, :8], atol=1e-5)  # the future does not leak


def test_adaptive_softmax_log_probs_match_fairseq_and_train():
    pytest.importorskip("fairseq", reason="the lm extra (fairseq-fixed) is not installed")
    from quantbench.models.transformer_lm import adaptive_log_probs

    torch.manual_seed(0)
    model = build_model("transformer_lm", (8,), 300, decoder_layers=1, decoder_embed_dim=16, decoder_ffn_embed_dim=32,
                        decoder_attention_heads=2, dropout=0.0)
    decoder = model.lm.decoder
    from fairseq.modules import AdaptiveSoftmax

    decoder.adaptive_softmax = AdaptiveSoftmax(300, 16, [100, 200], dropout=0.0)
    features = torch.randn(2, 8, 16)
    ours = adaptive_log_probs(decoder.adaptive_softmax.eval(), features)
    theirs = decoder.adaptive_softmax.get_log_prob(features, None)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ours.exp().sum(-1), torch.ones(2, 8), atol=1e-5)
    ours.sum().backward()  # fairseq's in-place version cannot be differentiated
    assert decoder.adaptive_softmax.head.weight.grad is not None
