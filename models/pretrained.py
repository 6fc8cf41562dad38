"""Pretrained references: published weights loaded into the network :func:`quantbench.models.build_model` built.

A recipe's ``pretrained`` names the weights (the reference job then loads instead of training):

* ``torchvision:<WeightsEnum>.<name>`` (``torchvision:ResNet50_Weights.IMAGENET1K_V1``): torchvision's
  weights API; the file is ``$TORCH_HOME/hub/checkpoints/<file of the URL>``; the published
  ``acc@1`` of its metadata is the reference's published figure.
* ``timm:<model>.<tag>`` (``timm:deit_base_patch16_224.fb_in1k``): timm's pretrained config for
  that tag; the file comes from the Hugging Face cache (``$HF_HOME``), and timm's own loader puts it
  into the model (the arch's ``model`` must be that timm model).
* a local path or an ``http(s)://`` URL of a state dict, with ``pretrained_sha256`` (URLs are
  cached under ``$TORCH_HOME/hub/checkpoints`` like torchvision's).

Nothing is downloaded unless ``download`` is true (``quantbench fetch-weights <grid>`` fills the
caches ahead of an offline run). Every file is identified by its sha256; a state dict must fit the
built network key for key (missing and unexpected keys are named).

**Evaluation preprocessing.** Published weights are measured with the preprocessing their source
declares, and so is every cell compressed from them (the test split of the reference job and of
its cells' jobs): torchvision weights with ``weights.transforms()`` (``ImageClassification``:
resize, centre crop, mean/std, interpolation), timm weights with
``create_transform(**resolve_data_config(pretrained_cfg=<the tag's>), is_training=False)`` (the tag's
``input_size``, ``crop_pct``, ``crop_mode``, interpolation, mean/std; its ``test_input_size`` is not
used: the task fixes the network's input size). :func:`preprocessing` is what the weights declare;
the job's identity records it as ``eval_transform`` (it changes the numbers), and only pretrained
references from torchvision or timm have one, so no other identity changes. At the task's image
size equal to the declared one the transform is the library's own; at another (a toy
``image_size``) it is built by the library's own rule at that size (timm keeps ``crop_pct``;
torchvision keeps the resize/crop ratio). A path or URL declares nothing: it is evaluated with
the task's own test transform (ImageNet: resize 256, centre crop 224, bilinear, ImageNet
mean/std), as any trained reference is. Training transforms are never changed: a method that
fine-tunes trains on the task's train split as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from quantbench.method import ConfigError
from quantbench.training.loop import file_sha256

log = logging.getLogger("quantbench")
FETCH_HINT = ("fetch it first with `quantbench fetch-weights <grid>` (where the network is reachable), "
              "or set download: true")


class WeightsError(ConfigError):
    """Pretrained weights that cannot be had or do not fit: the message names the file or keys."""


@dataclass(frozen=True)
class Weights:
    """Loaded weights: what they are, the file they came from, and the figure their source publishes."""

    source: str
    file: str
    sha256: str
    published: float | None = None
    published_source: str = ""


def parse(source: str) -> tuple[str, str]:
    """``(kind, name)``: kind is torchvision, timm, url or path."""
    for kind in ("torchvision", "timm"):
        if source.startswith(kind + ":"):
            return kind, source[len(kind) + 1:]
    if urlparse(source).scheme in ("http", "https"):
        return "url", source
    return "path", source.removeprefix("file:")


def check_source(source: str, sha256: str, where: str) -> None:
    """Refuse, at planning, a weights name its library does not know (listing the ones it does),
    or a path/URL without its sha256."""
    kind, name = parse(source)
    if kind == "torchvision":
        torchvision_weights(name, where)
    elif kind == "timm":
        timm_config(name, where)
    elif not sha256:
        raise ConfigError(f"{where}.pretrained_sha256: a {kind} of weights ({name}) needs its sha256")


def check_fits(source: str, arch: str, input_shape: tuple[int, ...], num_classes: int, arch_params: dict,
               where: str) -> None:
    """At planning, without the file: torchvision weights must fit the arch's network key for key
    (both built on the meta device), timm weights must be for the timm model the arch builds."""
    from quantbench.models import build_model

    kind, name = parse(source)
    if kind not in ("torchvision", "timm"):
        return
    with torch.device("meta"):
        ours = build_model(arch, input_shape, num_classes, **arch_params)
        if kind == "torchvision":
            import torchvision

            weights = torchvision_weights(name, where)
            builders = [m for m in torchvision.models.list_models(module=torchvision.models)
                        if torchvision.models.get_model_weights(m) is type(weights)]
            if builders:
                theirs = torchvision.models.get_model(builders[0], weights=None,
                                                      num_classes=len(weights.meta["categories"]))
                try:
                    load_state(ours, theirs.state_dict(), f"{where}.pretrained: {source}")
                except WeightsError as e:
                    raise ConfigError(f"{e} (arch {arch}, arch_params {arch_params})") from None
            return
    cfg = timm_config(name, where)
    built = getattr(ours, "pretrained_cfg", {}).get("architecture")
    if built != cfg.architecture:
        raise ConfigError(f"{where}.pretrained: {source} are weights of timm's {cfg.architecture}; arch {arch} builds "
                          f"{built or type(ours).__name__} (set arch_params.{arch}.model)")


def torchvision_weights(name: str, where: str = "pretrained"):
    import torchvision

    enum_name, _, member = name.partition(".")
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None or not enum_name.endswith("_Weights"):
        known = sorted(n for n in dir(torchvision.models) if n.endswith("_Weights"))
        raise ConfigError(f"{where}.pretrained: torchvision has no weights enum {enum_name!r}; known: {known}")
    if member not in enum.__members__:
        raise ConfigError(f"{where}.pretrained: {enum_name} has no weights {member!r}; "
                          f"allowed: {list(enum.__members__)}")
    return enum[member]


def timm_config(name: str, where: str = "pretrained"):
    import timm
    from timm.models import get_pretrained_cfg

    model, _, tag = name.partition(".")
    try:
        cfg = get_pretrained_cfg(name) if tag else None
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = timm.list_pretrained(f"{model}.*") if timm.is_model(model) else []
        hint = f"pretrained tags of {model}: {tags}" if tags else f"timm has no pretrained {model!r}"
        raise ConfigError(f"{where}.pretrained: timm:{name} is not a timm model.tag with weights; {hint}")
    return cfg


def preprocessing(source: str, where: str = "pretrained") -> dict | None:
    """The evaluation preprocessing the weights ``source`` declare (the identity's ``eval_transform``,
    in plain JSON values), or None for no weights, a path or a URL (the task's own transform)."""
    kind, name = parse(source) if source else ("", "")
    if kind == "torchvision":
        from torchvision.transforms import InterpolationMode

        t = torchvision_weights(name, where).transforms()
        fields = ("crop_size", "resize_size", "mean", "std", "interpolation", "antialias")
        if not all(hasattr(t, f) for f in fields) or not isinstance(t.interpolation, InterpolationMode):
            raise ConfigError(f"{where}.pretrained: {source} evaluate with {type(t).__name__}, not an image "
                              "classification transform")
        return {"library": "torchvision", "crop_size": int(t.crop_size[0]), "resize_size": int(t.resize_size[0]),
                "interpolation": t.interpolation.value, "mean": [float(v) for v in t.mean],
                "std": [float(v) for v in t.std], "antialias": t.antialias}
    if kind == "timm":
        from timm.data import resolve_data_config

        cfg = resolve_data_config(pretrained_cfg=timm_config(name, where).to_dict())
        return {"library": "timm", "input_size": [int(v) for v in cfg["input_size"]],
                "interpolation": cfg["interpolation"], "mean": [float(v) for v in cfg["mean"]],
                "std": [float(v) for v in cfg["std"]], "crop_pct": float(cfg["crop_pct"]),
                "crop_mode": cfg["crop_mode"]}
    return None


def eval_transform(source: str, image_size: tuple[int, int]) -> Callable:
    """The test transform of the weights ``source`` for a task of ``image_size`` (H, W): their
    library's own (``weights.transforms()``, timm's ``create_transform``), built by that library's
    rule at ``image_size`` where it differs from the declared size."""
    declared = preprocessing(source)
    if declared is None:
        raise ValueError(f"{source}: a path or URL declares no preprocessing (the task's transform applies)")
    h, w = (int(v) for v in image_size)
    own = declared["input_size"][1:] if declared["library"] == "timm" else [declared["crop_size"]] * 2
    if [h, w] != own:
        log.warning("the weights %s declare %dx%d px; evaluated at the task's %dx%d by their library's rule "
                    "(the published figure is not to be expected)", source, *own, h, w)
    if declared.pop("library") == "timm":
        from timm.data import create_transform

        return create_transform(**{**declared, "input_size": (declared["input_size"][0], h, w)}, is_training=False)
    transforms = torchvision_weights(parse(source)[1]).transforms
    if h != w:
        raise ValueError(f"{source}: torchvision's transform crops squares; the task's images are {h}x{w}")
    if h == declared["crop_size"]:
        return transforms()
    return transforms(crop_size=h, resize_size=round(h * declared["resize_size"] / declared["crop_size"]))


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _hf_file(cfg, download: bool) -> Path:
    """The weights file of a timm pretrained config, from the Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not cfg.hf_hub_id:
        raise WeightsError(f"timm weights {cfg.architecture}.{cfg.tag} have no Hugging Face file; "
                           f"give their URL and sha256 as pretrained instead ({cfg.url})")
    last: Exception | None = None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(cfg.hf_hub_id, filename, local_files_only=not download))
        except LocalEntryNotFoundError:
            continue
        except Exception as e:  # not on the hub under this name, or the network failed
            if not download:
                raise
            last = e
    if download:
        raise WeightsError(f"could not download the weights of {cfg.hf_hub_id}: {last}")
    raise WeightsError(f"the weights of timm:{cfg.architecture}.{cfg.tag} are not in the Hugging Face cache "
                       f"(HF_HOME, repository {cfg.hf_hub_id}); {FETCH_HINT}")


def weights_file(source: str, sha256: str = "", download: bool = False) -> tuple[Path, str]:
    """The cached file of ``source`` and its sha256, downloading it only when ``download``; a path or
    URL must match ``sha256``."""
    kind, name = parse(source)
    if kind == "torchvision":
        weights = torchvision_weights(name)
        path = _torch_hub_file(weights.url)
        if not path.is_file():
            if not download:
                raise WeightsError(f"the weights {source} are not cached at {path} (TORCH_HOME); {FETCH_HINT}")
            weights.get_state_dict(progress=True, check_hash=True)
    elif kind == "timm":
        path = _hf_file(timm_config(name), download)
    else:
        path = _torch_hub_file(name) if kind == "url" else Path(name).expanduser()
        if not path.is_file():
            if kind == "url" and download:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(name, str(path), progress=True)
            elif kind == "url":
                raise WeightsError(f"the weights {name} are not cached at {path}; {FETCH_HINT}")
            else:
                raise WeightsError(f"pretrained weights file {path} does not exist")
    digest = file_sha256(path)
    if sha256 and kind in ("url", "path") and digest != sha256.lower():
        raise WeightsError(f"pretrained weights file {path} has sha256 {digest}, "
                           f"not the pretrained_sha256 {sha256} the recipe gives")
    return path, digest


def fetch(source: str, sha256: str = "") -> Path:
    """Download the weights of ``source`` into their library's cache (``quantbench fetch-weights``);
    returns the cached file. Already cached files are not downloaded again."""
    return weights_file(source, sha256, download=True)[0]


def load_state(model: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model`` key for key, naming what does not fit."""
    if isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [f"{k}: {tuple(state[k].shape)} for {tuple(ours[k].shape)}" for k in ours
              if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsError(f"{what} do not fit {type(model).__name__}: missing keys {missing[:8]}"
                           f"{' …' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys {unexpected[:8]}"
                           f"{' …' if len(unexpected) > 8 else ''} ({len(unexpected)}), shapes {shapes[:8]}")
    model.load_state_dict(state, strict=True)


def load_pretrained(model: nn.Module, source: str, sha256: str = "", download: bool = False) -> Weights:
    """Put the weights ``source`` names into ``model`` (built by ``build_model``), offline unless
    ``download``; returns what was loaded."""
    kind, name = parse(source)
    path, digest = weights_file(source, sha256, download)
    if kind == "timm":
        _load_timm(model, timm_config(name), path, source)
        return Weights(source, str(path), digest)
    load_state(model, torch.load(path, map_location="cpu", weights_only=True), f"the weights {source} ({path})")
    if kind != "torchvision":
        return Weights(source, str(path), digest)
    weights = torchvision_weights(name)
    published = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return Weights(source, str(path), digest, published,
                   f"torchvision {type(weights).__name__}.{weights.name} metadata (ImageNet-1K acc@1)"
                   if published is not None else "")


def _load_timm(model: nn.Module, cfg, path: Path, source: str) -> None:
    """timm's own loader (its checkpoint filters adapt e.g. a ViT's position embeddings to the
    model's image size), refusing a classifier of another size rather than dropping it."""
    from timm.models import load_pretrained as timm_load

    if not hasattr(model, "pretrained_cfg"):
        raise WeightsError(f"{source}: the arch builds {type(model).__name__}, not a timm model")
    if model.pretrained_cfg.get("architecture") != cfg.architecture:
        raise WeightsError(f"{source} are weights of timm's {cfg.architecture}; the arch builds "
                           f"{model.pretrained_cfg.get('architecture')} (set arch_params.<arch>.model)")
    if model.num_classes != cfg.num_classes:
        raise WeightsError(f"{source} classify {cfg.num_classes} classes; the task has {model.num_classes}")
    import importlib

    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    overlay = {**cfg.to_dict(), "file": str(path), "hf_hub_id": None, "url": None}
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    try:
        timm_load(model, pretrained_cfg=overlay, num_classes=model.num_classes, in_chans=in_chans,
                  filter_fn=filter_fn, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{source} ({path}) do not fit {type(model).__name__}: {e}") from e
