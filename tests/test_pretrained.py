"""Pretrained references, offline: weights placed in the libraries' own caches (TORCH_HOME, HF_HOME)
or on a path are loaded through ``pretrained:``, evaluated and recorded; bad weights are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers.jobs import job_args
from helpers.records import write_run
from PIL import Image

from quantbench.config import load_config
from quantbench.data import build_task
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.jobs.runner import run_reference
from quantbench.method import ConfigError
from quantbench.models import build_model
from quantbench.models.pretrained import WeightsError
from quantbench.tracking import Tracker
from quantbench.training.loop import file_sha256

REPO = Path(__file__).resolve().parent.parent
RESNET18 = "torchvision:ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """A synthetic ImageNet in ImageFolder layout: 1000 classes in train (so the task has 1000),
    a few labelled images in val."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, classes, per_class in (("train", 1000, 1), ("val", 4, 3)):
        for c in range(classes):
            folder = root / "imagenet" / split / f"n{c:04d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG")
    return root


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def torchvision_file(torch_home: Path, source: str) -> Path:
    weights = torchvision.models.get_weight(source.partition(":")[2])
    return torch_home / "hub" / "checkpoints" / Path(weights.url).name


def grid(tmp_path: Path, data: Path, recipe: dict, task: str = "imagenet", arch: str = "resnet18",
         image_size: int = 64, **extra) -> dict:
    task_params = {"imagenet": {"image_size": image_size}} if task == "imagenet" else {}
    return {"name": "pt", "results_dir": str(tmp_path / "results"), "data_root": str(data), "tasks": [task],
            "archs": [arch], "budgets": [2], "task_params": task_params,
            "recipes": {task: {arch: recipe}}, **extra}


def test_torchvision_weights_from_the_torch_hub_cache_are_loaded_evaluated_and_recorded(
        tmp_path, torch_home, imagenet_root):
    torch.manual_seed(1)
    published = torchvision.models.resnet18(weights=None)  # stands in for the published file
    path = torchvision_file(torch_home, RESNET18)
    path.parent.mkdir(parents=True)
    torch.save(published.state_dict(), path)

    cfg = load_config(grid(tmp_path, imagenet_root, {"pretrained": RESNET18}, image_size=224))
    out = tmp_path / "ref" / "metrics.json"
    result = run_reference(plan_grid(cfg).spec(reference_id("imagenet", "resnet18", 0)), out, show_progress=False)

    assert result["pretrained"]["sha256"] == file_sha256(path) and result["pretrained"]["published"] == 69.758
    assert not result["cached"] and json.loads(out.read_text())["pretrained"]["file"] == str(path)
    # the measured metric is torchvision's own network with that file, evaluated on the same split
    # preprocessed by the weights' own transforms()
    task = build_task("imagenet", root=str(imagenet_root))
    task.test.transform = torchvision.models.get_weight(RESNET18.partition(":")[2]).transforms()
    published.load_state_dict(torch.load(path, weights_only=True))
    assert result["metrics"] == task.evaluate(published)
    cached = torch.load(result["checkpoint"], weights_only=True)
    assert all(torch.equal(cached[k], v) for k, v in published.state_dict().items())

    run = Tracker(cfg.tracking_uri()).runs("pt").iloc[0]
    assert run["tags.pretrained"] == RESNET18 and run["tags.pretrained_sha256"] == file_sha256(path)
    assert run["tags.paper_value"] == "69.758" and "ImageNet-1K acc@1" in run["tags.paper_source"]
    assert (run["params.eval_transform.resize_size"], run["params.eval_transform.crop_size"]) == ("256", "224")


def test_the_grid_s_own_figure_wins_over_the_published_metadata(tmp_path, torch_home, imagenet_root):
    path = torchvision_file(torch_home, RESNET18)
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    paper = {"source": "the paper", "figures": {"imagenet": {"resnet18": {"reference": 69.76}}}}
    cfg = load_config(grid(tmp_path, imagenet_root, {"pretrained": RESNET18}, paper=paper))
    run_reference(plan_grid(cfg).spec(reference_id("imagenet", "resnet18", 0)), tmp_path / "r" / "m.json",
                  show_progress=False)
    run = Tracker(cfg.tracking_uri()).runs("pt").iloc[0]
    assert (run["tags.paper_value"], run["tags.paper_source"]) == ("69.76", "the paper")


def test_a_local_state_dict_with_its_sha256(tmp_path):
    torch.manual_seed(2)
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 10}
    weights = build_model("lenet300", **kwargs)
    path = tmp_path / "lenet300.pt"
    torch.save(weights.state_dict(), path)
    cfg = load_config(grid(tmp_path, tmp_path, {"pretrained": str(path), "pretrained_sha256": file_sha256(path)},
                           task="digits", arch="lenet300"))
    result = run_reference(plan_grid(cfg).spec(reference_id("digits", "lenet300", 0)), tmp_path / "r" / "m.json",
                           show_progress=False)
    assert result["metrics"] == build_task("digits").evaluate(weights)
    assert result["pretrained"]["published"] is None

    # the identity includes the weights: another file is another reference
    other = plan_grid(cfg).identity(reference_id("digits", "lenet300", 0)).replace(
        train={**plan_grid(cfg).identity(reference_id("digits", "lenet300", 0)).train, "pretrained_sha256": "0" * 64})
    assert other.digest() != plan_grid(cfg).identity(reference_id("digits", "lenet300", 0)).digest()


@pytest.mark.parametrize("case", ["sha256 mismatch", "not cached", "another architecture", "unknown name"])
def test_bad_weights_are_refused_and_nothing_is_recorded_as_a_result(case, tmp_path, torch_home, imagenet_root):
    lenet = tmp_path / "lenet300.pt"
    torch.save(build_model("lenet300", [1, 8, 8], 10).state_dict(), lenet)
    if case == "sha256 mismatch":
        recipe, task, arch = {"pretrained": str(lenet), "pretrained_sha256": "ab" * 32}, "digits", "lenet300"
        message = rf"{lenet} has sha256 {file_sha256(lenet)}, not the pretrained_sha256 abab"
    elif case == "not cached":
        recipe, task, arch = {"pretrained": RESNET18}, "imagenet", "resnet18"
        message = rf"not cached at {torchvision_file(torch_home, RESNET18)} \(TORCH_HOME\); fetch it first with " \
                  r"`quantbench fetch-weights <grid>`"
    elif case == "another architecture":  # ResNet-50 weights under ResNet-18's file name
        path = torchvision_file(torch_home, RESNET18)
        path.parent.mkdir(parents=True)
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
        recipe, task, arch = {"pretrained": RESNET18}, "imagenet", "resnet18"
        message = r"do not fit ResNet: missing keys \[\] \(0\), unexpected keys \['layer1.0.bn3.bias'"
    else:
        with pytest.raises(ConfigError, match=r"recipes.imagenet.resnet18.pretrained: ResNet18_Weights has no "
                                              r"weights 'V9'; allowed: \['IMAGENET1K_V1', 'DEFAULT'\]"):
            load_config(grid(tmp_path, imagenet_root, {"pretrained": "torchvision:ResNet18_Weights.V9"}))
        return
    cfg = load_config(grid(tmp_path, imagenet_root if task == "imagenet" else tmp_path, recipe, task=task, arch=arch))
    out = tmp_path / "r" / "metrics.json"
    with pytest.raises(WeightsError, match=message):
        run_reference(plan_grid(cfg).spec(reference_id(task, arch, 0)), out, show_progress=False)
    assert not out.exists() and not list((tmp_path / "results").glob("cache/references/*.pt"))
    run = Tracker(cfg.tracking_uri()).runs("pt").iloc[0]
    assert run["status"] == "FAILED" and "metrics.accuracy" not in run.dropna()


def _hf_cache(hf_home: Path, repo: str, state: dict) -> Path:
    """A Hugging Face hub cache holding ``state`` as ``repo``'s model.safetensors (what
    ``hf_hub_download`` leaves behind)."""
    from safetensors.torch import save_file

    revision = "0" * 40
    base = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    path = base / "snapshots" / revision / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.slow
def test_timm_weights_from_the_hugging_face_cache_through_the_cli(tmp_path, imagenet_root):
    """`quantbench reference` with HF_HOME holding DeiT-tiny's weights, offline: timm's own loader
    puts them into our vit (its position embeddings resampled to 64 px); the same as timm's
    create_model(pretrained=True) with that file."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    path = _hf_cache(tmp_path / "hf", "timm/deit_tiny_patch16_224.fb_in1k", state)
    config = grid(tmp_path, imagenet_root, {"pretrained": "timm:deit_tiny_patch16_224.fb_in1k"}, arch="vit",
                  arch_params={"vit": {"model": "deit_tiny_patch16_224"}})
    cfg = load_config(config)
    out = tmp_path / "ref" / "metrics.json"
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "reference",
                           *job_args(cfg, reference_id("imagenet", "vit", 0), tmp_path), "--out", str(out),
                           "--no-progress"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pretrained"]["sha256"] == file_sha256(path)
    expected = timm.create_model("deit_tiny_patch16_224", pretrained=True, img_size=64, num_classes=1000,
                                 pretrained_cfg_overlay={"file": str(path)}).state_dict()
    cached = torch.load(result["checkpoint"], weights_only=True)
    assert cached.keys() == expected.keys() and all(torch.equal(cached[k], expected[k]) for k in expected)
    assert expected["pos_embed"].shape[1] == 1 + (64 // 16) ** 2  # resampled from 224 px


def test_fetch_weights_finds_what_is_cached_without_the_network(tmp_path, torch_home, imagenet_root):
    path = torchvision_file(torch_home, RESNET18)
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    config = tmp_path / "g.yaml"
    import yaml

    config.write_text(yaml.safe_dump(grid(tmp_path, imagenet_root, {"pretrained": RESNET18})))
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "fetch-weights", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{RESNET18} (imagenet/resnet18): {path}"


def test_the_paper_grids_start_from_pretrained_imagenet_references():
    """No ImageNet reference of a paper grid is trained here; each names published weights that
    torchvision or timm know (checked at planning)."""
    for path in sorted((REPO / "workflows" / "config").glob("paper_*.yaml")):
        cfg = load_config(path)
        for task, arch, _seed in cfg.references():
            if task == "imagenet":
                assert cfg.train_settings(task, arch).pretrained, f"{path.name}: {arch}"


@pytest.mark.parametrize("source,arch,arch_params", [
    ("torchvision:AlexNet_Weights.IMAGENET1K_V1", "alexnet", {}),
    ("torchvision:VGG16_Weights.IMAGENET1K_V1", "vgg16", {"batch_norm": False}),
    ("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18", {}),
    ("torchvision:ResNet50_Weights.IMAGENET1K_V1", "resnet50", {}),
])
def test_our_builders_take_torchvision_state_dicts_key_for_key(source, arch, arch_params):
    from quantbench.models.pretrained import torchvision_weights

    weights = torchvision_weights(source.partition(":")[2])
    builder = {"alexnet": torchvision.models.alexnet, "vgg16": torchvision.models.vgg16,
               "resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}[arch]
    with torch.device("meta"):
        theirs = builder(weights=None).state_dict()
        ours = build_model(arch, (3, 224, 224), len(weights.meta["categories"]), **arch_params)
    _fits_key_for_key(ours, theirs, source)


def _fits_key_for_key(ours: torch.nn.Module, theirs: dict, source: str) -> None:
    """Every key and shape of ``theirs`` is ours, and load_state takes it; one key fewer or one
    shape wrong, and it refuses naming it."""
    from quantbench.models.pretrained import WeightsError, load_state

    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    load_state(ours, theirs, source)
    first = next(iter(theirs))
    with pytest.raises(WeightsError, match=rf"missing keys \['{first}'\]"):
        load_state(ours, {k: v for k, v in theirs.items() if k != first}, source)
    with pytest.raises(WeightsError, match=rf"shapes \['{first}: \(1,\) for"):
        load_state(ours, {**theirs, first: torch.zeros(1, device="meta")}, source)


@pytest.mark.parametrize("model,arch,arch_params", [
    ("deit_base_patch16_224", "vit", {"model": "deit_base_patch16_224"}),
    ("mobilenetv1_100", "mobilenet_v1", {}),
])
def test_our_builders_take_timm_state_dicts_key_for_key(model, arch, arch_params):
    import timm

    with torch.device("meta"):
        theirs = timm.create_model(model, pretrained=False).state_dict()
        ours = build_model(arch, (3, 224, 224), 1000, **arch_params)
    _fits_key_for_key(ours, theirs, model)


def test_the_published_figures_reach_the_paper_columns_of_the_gpfq_table(tmp_path):
    """A record of the GPFQ grid whose runs carry the tags the jobs give them: the table shows the
    published figures (the authors' logs) beside ours."""
    from types import SimpleNamespace

    from quantbench.jobs import runner
    from quantbench.report.tables import tables_from_mlflow

    cfg = load_config(REPO / "workflows" / "config" / "paper_gpfq.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.ensure_experiment("paper-gpfq", tmp_path / "artifacts")
    task = SimpleNamespace(metric="accuracy", higher_is_better=True)
    plan = plan_grid(cfg)
    jobs = [plan.spec(job_id) for job_id in [*plan.references, *plan.cells]]
    for spec in jobs:
        tags = {**runner._tags(spec, torch.device("cpu"), task), "status": "ok"}
        write_run(tracker, exp, spec.identity.cell_id, {"accuracy": 50.0, "bpw": 4.0, "compression_ratio": 8.0}, tags)
    tables_from_mlflow(tracker.uri, "paper-gpfq", tmp_path / "tables")
    md = (tmp_path / "tables" / "imagenet.md").read_text()
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| arch")).split("|")]
    rows = {(cells[1].strip(), cells[3].strip()): [c.strip() for c in cells]
            for cells in (line.split("|") for line in md.splitlines() if line.startswith("| ") and "---" not in line)}
    col = {name: i for i, name in enumerate(header)}
    assert rows[("resnet50", "reference")][col["4-bit paper"]] == "76.13"
    assert rows[("resnet50", "gpfq")][col["4-bit paper"]] == "73.74"
    assert rows[("alexnet", "gpfq")][col["3-bit paper"]] == "53.23"
    assert rows[("vgg16", "gpfq")][col["5-bit paper"]] == "70.96"
    assert rows[("resnet18", "gpfq")][col["2-bit paper"]] == "—"  # not logged
    cifar = (tmp_path / "tables" / "cifar10.md").read_text()
    assert "28.00" in next(line for line in cifar.splitlines() if "| msq" in line)


@pytest.mark.parametrize("arch,arch_params,source,message", [
    ("resnet18", {}, "torchvision:ResNet50_Weights.IMAGENET1K_V1",
     r"recipes.imagenet.resnet18.pretrained: torchvision:ResNet50_Weights.IMAGENET1K_V1 do not fit ResNet: "
     r"missing keys \[\] \(0\), unexpected keys \['layer1.0.bn3.bias'"),
    ("vgg16", {}, "torchvision:VGG16_Weights.IMAGENET1K_V1",  # our default is VGG16-BN
     r"do not fit VGG: missing keys \['features.1.bias'"),
    ("vit", {}, "timm:deit_base_patch16_224.fb_in1k",
     r"weights of timm's deit_base_patch16_224; arch vit builds vit_tiny_patch16_224 \(set arch_params.vit.model\)"),
])
def test_weights_of_another_architecture_are_refused_at_planning(arch, arch_params, source, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"name": "x", "tasks": ["imagenet"], "archs": [arch], "arch_params": {arch: arch_params},
                     "recipes": {"imagenet": {arch: {"pretrained": source}}}})


# ---- each reference with its own preprocessing ---------------------------------------------------

def _parts(transform) -> list:
    """What a test transform does, step by step: (name, size, interpolation, mean, std)."""
    steps = getattr(transform, "transforms", [transform])
    return [(type(t).__name__, getattr(t, "size", getattr(t, "crop_size", None)),
             str(getattr(t, "interpolation", getattr(t, "resize_size", None))),
             [float(v) for v in getattr(t, "mean", [])], [float(v) for v in getattr(t, "std", [])]) for t in steps]


@pytest.mark.parametrize("tag,resize,mean", [
    ("deit_base_patch16_224.fb_in1k", 248, [0.485, 0.456, 0.406]),  # crop_pct 0.9
    ("mobilenetv1_100.ra4_e3600_r224_in1k", 256, [0.5, 0.5, 0.5]),  # crop_pct 0.875, its own mean/std
])
def test_a_timm_reference_evaluates_with_timm_s_own_transform_for_its_tag(tag, resize, mean):
    import timm
    from timm.data import create_transform, resolve_data_config

    from quantbench.models.pretrained import eval_transform, preprocessing

    with torch.device("meta"):  # the tag's pretrained_cfg, without weights or the network
        model = timm.create_model(tag, pretrained=False)
    theirs = create_transform(**resolve_data_config({}, model=model), is_training=False)
    ours = eval_transform(f"timm:{tag}", (224, 224))
    assert repr(ours) == repr(theirs) and _parts(ours) == _parts(theirs)
    resize_step, crop_step, _, norm = ours.transforms
    assert (resize_step.size, resize_step.interpolation.value, crop_step.size) == (resize, "bicubic", (224, 224))
    assert norm.mean.tolist() == pytest.approx(mean)
    assert preprocessing(f"timm:{tag}")["crop_pct"] == model.pretrained_cfg["crop_pct"]


@pytest.mark.parametrize("name", ["ResNet18_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V2",
                                  "ViT_B_16_Weights.IMAGENET1K_V1"])
def test_a_torchvision_reference_evaluates_with_its_weights_transforms(name):
    from quantbench.models.pretrained import eval_transform

    weights = torchvision.models.get_weight(name)
    theirs, ours = weights.transforms(), eval_transform(f"torchvision:{name}", (224, 224))
    fields = ("crop_size", "resize_size", "interpolation", "mean", "std", "antialias")
    assert type(ours) is type(theirs) and repr(ours) == repr(theirs)
    assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]


def test_the_test_split_of_a_reference_and_its_cells_is_preprocessed_as_its_weights_declare(tmp_path, imagenet_root):
    """The tensors the reference job and a cell job evaluate are the library's transform applied to
    the val images; a path keeps the task's own; train is never touched; identities say which."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from quantbench.config import Cell
    from quantbench.jobs.runner import _setup
    from quantbench.models.pretrained import preprocessing

    lenet = tmp_path / "w.pt"
    lenet.write_bytes(b"not read at planning")
    deit = "timm:deit_tiny_patch16_224.fb_in1k"
    with torch.device("meta"):
        model = timm.create_model(deit[5:], pretrained=False)
    timm_tf = create_transform(**resolve_data_config({}, model=model), is_training=False)
    task_tf = build_task("imagenet", root=str(imagenet_root)).test.transform
    resnet50 = "torchvision:ResNet50_Weights.IMAGENET1K_V2"  # resize 232 (the task's: 256)
    cases = [("resnet50", {}, resnet50, torchvision.models.get_weight(resnet50[12:]).transforms()),
             ("vit", {"model": "deit_tiny_patch16_224"}, deit, timm_tf),
             ("alexnet", {}, str(lenet), task_tf)]
    val = imagenet_root / "imagenet" / "val"
    for arch, arch_params, source, expected_tf in cases:
        recipe = {"pretrained": source, **({"pretrained_sha256": "0" * 64} if source == str(lenet) else {})}
        cfg = load_config(grid(tmp_path, imagenet_root, recipe, arch=arch, image_size=224,
                               arch_params={arch: arch_params}, methods=["rtn"], budgets=[4]))
        expected = torch.stack([x for x, _ in torchvision.datasets.ImageFolder(str(val), transform=expected_tf)])
        plan = plan_grid(cfg)
        ref, cell = plan.spec(reference_id("imagenet", arch, 0)), plan.spec(Cell("imagenet", arch, "rtn", "4", 0))
        assert ref.identity.eval_transform == cell.identity.eval_transform == preprocessing(source)
        assert ("eval_transform" in ref.identity.as_dict()) == (source != str(lenet))
        for spec in (ref, cell):
            task = _setup(spec, 1)[0]
            got = torch.cat([x for x, _ in task.loader("test", 5)])
            assert torch.equal(got, expected), (arch, spec.identity.kind)
            assert task.train.transform is not task.test.transform  # training keeps the task's transform
    # a spec whose eval_transform is not what its weights declare is refused before anything runs
    stale = ref.replace(eval_transform={**preprocessing(RESNET18), "crop_size": 192}, train={
        **ref.identity.train, "pretrained": RESNET18, "pretrained_sha256": ""})
    with pytest.raises(ConfigError, match=r"imagenet/.*: eval_transform .* is not the preprocessing the weights "
                                          r"torchvision:ResNet18_Weights.IMAGENET1K_V1 declare, .*plan the job again"):
        _setup(stale, 1)


def test_trained_references_keep_their_identities():
    """No eval_transform where no pretrained weights declare one: the default grid's identities
    (and so every recorded run of it) are unchanged."""
    cfg = load_config(REPO / "workflows" / "config" / "default.yaml")
    plan = plan_grid(cfg)
    jobs = [plan.identity(job_id) for job_id in [*plan.references, *plan.cells]]
    assert jobs and all(job.eval_transform is None and "eval_transform" not in job.as_dict() for job in jobs)
