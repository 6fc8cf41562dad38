"""Vision transformers from timm (never a pretrained download).

``vit``: any timm ``vit_*`` / ``deit_*`` model at the task's image size and channels, with the
patch size and the size knobs overridable (the toy member: patch 2, 2 blocks of width 32 on
digits' 8x8 images). The paper-size DeiT-B is ``model: deit_base_patch16_224``.
"""

from __future__ import annotations

from torch import nn

from quantbench.registry import register_model


@register_model
def vit(input_shape: tuple[int, ...], num_classes: int, model: str = "vit_tiny_patch16_224",
        patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
        num_heads: int | None = None, mlp_ratio: float | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """timm ``model`` built for ``input_shape`` = (C, H, W); ``None`` keeps the model's own value."""
    if not (model.startswith("vit_") or model.startswith("deit_")):
        raise ValueError(f"vit: model must be a timm vit_* or deit_* name, got {model!r}")
    import timm

    if not timm.is_model(model):
        raise ValueError(f"timm has no model {model!r} (timm {timm.__version__})")
    sizes = {"patch_size": patch_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
             "mlp_ratio": mlp_ratio}
    return timm.create_model(model, pretrained=False, img_size=tuple(input_shape[1:]), in_chans=input_shape[0],
                             num_classes=num_classes, drop_path_rate=drop_path_rate,
                             **{k: v for k, v in sizes.items() if v is not None})
