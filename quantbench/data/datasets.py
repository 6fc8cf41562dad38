"""The task builders (``@register_task``), one per data set, and their file helpers.

Every builder takes ``root`` (where its files live) and ``download`` (allow a download; nothing
touches the network otherwise). With files missing and no download, the error names the files
and where to put them.

* ``digits``: scikit-learn's 8x8 digits (ships with scikit-learn, offline), pixels in [0, 1], a
  fixed stratified train/test split (``split_seed``) shared by every cell's seed.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: torchvision, the standard splits;
  CIFAR trains with random crop (pad 4) + horizontal flip.
* ``mnist_t10k``: the official MNIST *test* set only (``<root>/mnist-t10k/``, md5-checked), split
  8,000 / 2,000 (stratified, ``split_seed``); a small real data set, not the MNIST protocol.
* ``imagenet``: ImageFolder layout ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``; random-resized
  crop 224 + flip for training, resize 256 + centre crop 224 (bilinear) for evaluation. Published
  torchvision/timm weights replace the evaluation transform with their own in the reference's and
  its cells' jobs (:meth:`Task.use_eval_transform`, :mod:`quantbench.models.pretrained`).
* ``wikitext2``, ``wikitext103``: the tokenised ``wiki.train.tokens`` and ``wiki.test.tokens``
  (``wiki.valid.tokens`` is not read: there is no validation split); the whitespace tokens of
  every line then ``</s>`` (fairseq's end of sentence), blank lines included; word-level
  vocabulary from train (by frequency).
* ``tinyshakespeare``: ``<root>/tinyshakespeare/input.txt`` (md5-checked), character level, the
  first 90 % for training and the last 10 % for testing.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from quantbench.data.tasks import LanguageModelingTask, Task
from quantbench.data.text import _lm_task, read_wikitext
from quantbench.registry import register_task

# (input_shape, num_classes) of the tasks with files, known without the files: for dry runs and
# the paper-size smoke tests. (LM inputs are token blocks; the vocabulary is fairseq's size.)
TASK_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist": ((1, 28, 28), 10), "mnist_t10k": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000),
    "wikitext2": ((512,), 33282), "wikitext103": ((512,), 267744), "tinyshakespeare": ((128,), 69),
}



def missing_files(task: str, files: list[Path], hint: str) -> FileNotFoundError:
    listed = ", ".join(str(f) for f in files)
    return FileNotFoundError(f"task {task}: data files not found: {listed}. {hint}")


def check_md5(task: str, path: Path, expected: str) -> None:
    """Refuse a file whose md5 is not ``expected``. (hashlib's, not torchvision's ``check_integrity``,
    which is the same digest but would import torchvision, 1.2-1.7 s, in jobs that never need it.)"""
    with open(path, "rb") as f:
        got = hashlib.file_digest(f, "md5").hexdigest()
    if got != expected:
        raise ValueError(f"task {task}: {path} has md5 {got}, expected {expected} (a damaged or different file)")


def _stratified_split(x: np.ndarray, y: np.ndarray, test_size: float | int, split_seed: int):
    """Seeded stratified split -> (x_train, x_test, y_train, y_test): each class gives its share
    (``test_size`` as a fraction, or a count spread over classes in proportion) to the test set.
    Ours, not scikit-learn's ``train_test_split(stratify=y)``: importing scikit-learn costs 1.2-1.6 s
    in every grid job, and its split is another one (on digits at 0.2: 360 test images, not 359, and
    other members), so the recorded tables would move."""
    rng = np.random.default_rng(split_seed)
    fraction = test_size / len(y) if isinstance(test_size, int) else float(test_size)
    test = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        test.append(rng.permutation(members)[: round(fraction * len(members))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


def _tensor_task(name: str, x_tr, x_te, y_tr, y_te, num_classes: int) -> Task:
    return Task(name=name, train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
                test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
                input_shape=tuple(x_tr.shape[1:]), num_classes=num_classes)


@register_task
def digits(root: str = "data", download: bool = False, test_fraction: float = 0.2, split_seed: int = 0) -> Task:
    """scikit-learn's digits; offline (the data ships with scikit-learn).

    Read straight from scikit-learn's ``datasets/data/digits.csv.gz`` (64 pixels in 0..16, then the
    label per row), without importing scikit-learn.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("task digits: scikit-learn is not installed (it ships the digits data)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (table[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    y = table[:, 64].astype(np.int64)
    return _tensor_task("digits", *_stratified_split(x, y, test_fraction, split_seed), num_classes=10)


MNIST_T10K = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as an array, read by torchvision's MNIST reader (which takes an
    uncompressed file: the decompressed bytes go through a temporary one)."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    with tempfile.NamedTemporaryFile(prefix="quantbench-idx-") as raw:
        raw.write(gzip.decompress(path.read_bytes()))
        raw.flush()
        return read_sn3_pascalvincent_tensor(raw.name).numpy()


@register_task
def mnist_t10k(root: str = "data", download: bool = False, test_size: int = 2000, split_seed: int = 0) -> Task:
    """The official MNIST test set (10,000 images) split 8,000 / 2,000; no download offered."""
    folder = Path(root) / "mnist-t10k"
    files = [folder / f for f in MNIST_T10K]
    if not all(f.is_file() for f in files):
        raise missing_files("mnist_t10k", files, "Copy the official MNIST t10k files (IDX, gzip) there.")
    for f, md5 in zip(files, MNIST_T10K.values(), strict=True):
        check_md5("mnist_t10k", f, md5)
    x = ((read_idx(files[0]).astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]
    y = read_idx(files[1]).astype(np.int64)
    return _tensor_task("mnist_t10k", *_stratified_split(x, y, test_size, split_seed), num_classes=10)


CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision_task(name: str, dataset_cls: str, root: str, download: bool, train_tf, test_tf,
                      input_shape: tuple[int, ...], num_classes: int, expected: list[str]) -> Task:
    import torchvision

    cls = getattr(torchvision.datasets, dataset_cls)
    try:
        train = cls(root, train=True, download=download, transform=train_tf)
        test = cls(root, train=False, download=download, transform=test_tf)
    except RuntimeError as e:
        if download:
            raise
        raise missing_files(name, [Path(root) / p for p in expected],
                            f"Set `download: true` in the config (torchvision fetches them) or copy them there. ({e})"
                            ) from None
    return Task(name=name, train=train, test=test, input_shape=input_shape, num_classes=num_classes,
                augmented=train_tf is not test_tf)


def _mnist_like(name: str, cls: str, root: str, download: bool) -> Task:
    from torchvision import transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    raw = [f"{cls}/raw/{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    return _torchvision_task(name, cls, root, download, tf, tf, (1, 28, 28), 10, raw)


@register_task
def mnist(root: str = "data", download: bool = False) -> Task:
    """MNIST, 60,000 training / 10,000 test images (torchvision)."""
    return _mnist_like("mnist", "MNIST", root, download)


@register_task
def fashion_mnist(root: str = "data", download: bool = False) -> Task:
    """Fashion-MNIST (torchvision)."""
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download)


def _cifar(name: str, root: str, download: bool, augment: bool) -> Task:
    from torchvision import transforms as T

    norm = T.Normalize(*CIFAR_STATS[name])
    test_tf = T.Compose([T.ToTensor(), norm])
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm]) \
        if augment else test_tf
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    cls = "CIFAR10" if name == "cifar10" else "CIFAR100"
    return _torchvision_task(name, cls, root, download, train_tf, test_tf, (3, 32, 32),
                             10 if name == "cifar10" else 100, [folder])


@register_task
def cifar10(root: str = "data", download: bool = False, augment: bool = True) -> Task:
    """CIFAR-10 (torchvision); ``augment``: random crop (pad 4) + flip for training."""
    return _cifar("cifar10", root, download, augment)


@register_task
def cifar100(root: str = "data", download: bool = False, augment: bool = True) -> Task:
    """CIFAR-100 (torchvision)."""
    return _cifar("cifar100", root, download, augment)


@register_task
def imagenet(root: str = "data", download: bool = False, image_size: int = 224) -> Task:
    """ILSVRC-2012 in ImageFolder layout under ``<root>/imagenet``; it cannot be downloaded."""
    import torchvision
    from torchvision import transforms as T

    folder = Path(root) / "imagenet"
    splits = [folder / "train", folder / "val"]
    if not all(s.is_dir() for s in splits):
        raise missing_files("imagenet", splits, "ImageNet cannot be downloaded by quantbench: put the ILSVRC-2012 "
                            "train and val images there, one folder per class (ImageFolder layout).")
    norm = T.Normalize(*IMAGENET_STATS)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    train = torchvision.datasets.ImageFolder(str(splits[0]), transform=train_tf)
    test = torchvision.datasets.ImageFolder(str(splits[1]), transform=test_tf)
    return Task("imagenet", train, test, (3, image_size, image_size), len(train.classes), augmented=True)



# ---- language modelling -------------------------------------------------------------------------

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"


@register_task
def tinyshakespeare(root: str = "data", download: bool = False, tokens_per_sample: int = 128,
                    max_train_tokens: int | None = None) -> LanguageModelingTask:
    """Character-level tiny Shakespeare; ``max_train_tokens`` caps the training stream (toy runs)."""
    path = Path(root) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        if not download:
            raise missing_files("tinyshakespeare", [path], "Set `download: true` or copy input.txt there.")
        from torchvision.datasets.utils import download_url

        download_url(TINYSHAKESPEARE_URL, str(path.parent), "input.txt", md5=TINYSHAKESPEARE_MD5)
    check_md5("tinyshakespeare", path, TINYSHAKESPEARE_MD5)
    text = path.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    return _lm_task("tinyshakespeare", list(text[:cut]), list(text[cut:]), tokens_per_sample, max_train_tokens)


WIKITEXT_URLS = {"wikitext2": "https://wikitext.smerity.com/wikitext-2-v1.zip",
                 "wikitext103": "https://wikitext.smerity.com/wikitext-103-v1.zip"}


def _wikitext(name: str, folder_name: str, root: str, download: bool, tokens_per_sample: int,
              max_train_tokens: int | None) -> LanguageModelingTask:
    folder = Path(root) / folder_name
    files = [folder / f"wiki.{s}.tokens" for s in ("train", "test")]
    if not all(f.is_file() for f in files):
        if not download:
            raise missing_files(name, files, f"Set `download: true` or unpack {WIKITEXT_URLS[name]} under {root}.")
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(WIKITEXT_URLS[name], root)
    return _lm_task(name, read_wikitext(files[0]), read_wikitext(files[1]), tokens_per_sample, max_train_tokens)


@register_task
def wikitext2(root: str = "data", download: bool = False, tokens_per_sample: int = 512,
              max_train_tokens: int | None = None) -> LanguageModelingTask:
    """WikiText-2 (word level, 33k vocabulary)."""
    return _wikitext("wikitext2", "wikitext-2", root, download, tokens_per_sample, max_train_tokens)


@register_task
def wikitext103(root: str = "data", download: bool = False, tokens_per_sample: int = 512,
                max_train_tokens: int | None = None) -> LanguageModelingTask:
    """WikiText-103 (word level, 267k vocabulary; the DiffQ/fairseq adaptive-input LM's data)."""
    return _wikitext("wikitext103", "wikitext-103", root, download, tokens_per_sample, max_train_tokens)
