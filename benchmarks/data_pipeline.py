"""Images per second of the ImageNet pipeline at 0, 1 and 2 loader workers, against a bare decode loop.

Builds an ImageNet-layout folder of synthetic JPEGs (default 2,000 images of 500x375 in 100
classes, train and val), then times one pass of the task's own loaders (``quantbench.data``:
JPEG decode, RandomResizedCrop/flip or resize/centre crop, normalisation, batches of 64) with
``loaders.imagenet.workers`` = 0, 1, 2, and a plain ``PIL.Image.open(...).convert("RGB")`` loop
over the same files. Ratios are to 0 workers, measured in the same run. Target on a 2-core
machine: 2 workers >= 1.7x 0 workers for training.

    python benchmarks/data_pipeline.py [--images 2000] [--root /tmp/qb-imagenet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from quantbench.data import Pipeline, build_task


def make_folder(root: Path, images: int, classes: int = 100) -> None:
    """``root/imagenet/{train,val}/<class>/*.JPEG``, random-noise-and-gradient images, seeded."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(images):
            folder = root / "imagenet" / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i}.JPEG"
            if path.exists():
                continue
            base = np.linspace(0, 255, 500)[None, :, None] * rng.random(3)
            noise = rng.integers(0, 64, (375, 500, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def images_per_s(task, split: str, seed: int | None) -> float:
    n, t0 = 0, time.perf_counter()
    for x, _ in task.loader(split, 64, seed=seed):
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/qb-imagenet"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    make_folder(args.root, args.images)
    files = sorted((args.root / "imagenet" / "train").rglob("*.JPEG"))
    t0 = time.perf_counter()
    for f in files:
        Image.open(f).convert("RGB")
    bare = len(files) / (time.perf_counter() - t0)
    rows = [{"pipeline": "bare decode loop (PIL)", "workers": 0, "train img/s": bare, "eval img/s": bare}]
    for workers in (0, 1, 2):
        task = build_task("imagenet", root=str(args.root))
        task.pipeline = Pipeline(workers=workers)
        train, evaluation = images_per_s(task, "train", seed=0), images_per_s(task, "test", None)
        rows.append({"pipeline": "quantbench imagenet", "workers": workers, "train img/s": train,
                     "eval img/s": evaluation})
    table = pd.DataFrame(rows)
    base = table[(table["pipeline"] != "bare decode loop (PIL)") & (table["workers"] == 0)].iloc[0]
    table["train ÷ 0 workers"] = table["train img/s"] / base["train img/s"]
    table["eval ÷ 0 workers"] = table["eval img/s"] / base["eval img/s"]
    print(f"{len(files)} train and {len(files)} val JPEGs of 500x375, batch 64, torch threads 1")
    print(table.round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
