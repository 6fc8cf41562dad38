"""Tasks: real files from ../shared/data when present (skipped with a reason otherwise), hand-made
token files, the missing-file errors, and the split and metric definitions."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from quantbench.data import (
    SPECIAL_SYMBOLS,
    UNK,
    blocks,
    build_task,
    read_idx,
)
from quantbench.data.datasets import _stratified_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist-t10k").is_dir(), reason=f"{SHARED}/mnist-t10k is not here")
needs_shakespeare = pytest.mark.skipif(not (SHARED / "tinyshakespeare").is_dir(),
                                       reason=f"{SHARED}/tinyshakespeare is not here")


def test_digits_are_scikit_learns_digits():
    from sklearn.datasets import load_digits

    task = build_task("digits")
    ours = np.concatenate([task.train.tensors[0].numpy(), task.test.tensors[0].numpy()]).reshape(-1, 64) * 16
    labels = np.concatenate([task.train.tensors[1].numpy(), task.test.tensors[1].numpy()])
    ref = load_digits()
    order_ours = np.lexsort(np.c_[ours, labels].T)
    order_ref = np.lexsort(np.c_[ref.data, ref.target].T)
    assert np.array_equal(ours[order_ours], ref.data[order_ref])
    assert np.array_equal(labels[order_ours], ref.target[order_ref])


def test_stratified_split_keeps_class_shares_and_is_seeded():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    x = np.arange(100)
    x_tr, x_te, y_tr, y_te = _stratified_split(x, y, 0.2, split_seed=3)
    assert np.bincount(y_te).tolist() == [2, 4, 6, 8]
    assert sorted(np.concatenate([x_tr, x_te]).tolist()) == list(range(100))
    assert np.array_equal(_stratified_split(x, y, 0.2, 3)[1], x_te)
    assert not np.array_equal(_stratified_split(x, y, 0.2, 4)[1], x_te)


@needs_mnist
def test_mnist_t10k_reads_the_real_files():
    """The official test set as published (its first labels and class counts), normalised and
    split 8,000 / 2,000 by class."""
    from quantbench.data import MNIST_MEAN, MNIST_STD

    task = build_task("mnist_t10k", root=str(SHARED))
    assert len(task.train) == 8000 and len(task.test) == 2000 and task.input_shape == (1, 28, 28)
    images = read_idx(SHARED / "mnist-t10k" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED / "mnist-t10k" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train, test, *_ = _stratified_split(np.arange(10000), labels, 2000, split_seed=0)
    x = ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]
    assert np.array_equal(task.train.tensors[0].numpy(), x[train])
    assert np.array_equal(task.test.tensors[0].numpy(), x[test])
    assert np.array_equal(task.test.tensors[1].numpy(), labels[test])
    assert np.all(np.abs(np.bincount(labels[test]) - np.bincount(labels) * 0.2) <= 1)  # stratified


@needs_mnist
def test_a_damaged_mnist_file_is_refused(tmp_path):
    shutil.copytree(SHARED / "mnist-t10k", tmp_path / "mnist-t10k")
    f = tmp_path / "mnist-t10k" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz has md5 .* expected ec29112d"):
        build_task("mnist_t10k", root=str(tmp_path))


@pytest.mark.parametrize("task,names", [
    ("mnist_t10k", ["mnist-t10k/t10k-images-idx3-ubyte.gz"]),
    ("cifar10", ["cifar-10-batches-py", "download: true"]),
    ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "download: true"]),
    ("imagenet", ["imagenet/train", "imagenet/val", "ImageFolder"]),
    ("wikitext2", ["wikitext-2/wiki.train.tokens", "download: true"]),
    ("tinyshakespeare", ["tinyshakespeare/input.txt", "download: true"]),
])
def test_missing_files_name_the_files_and_the_way_out(tmp_path, task, names):
    with pytest.raises(FileNotFoundError) as err:
        build_task(task, root=str(tmp_path))
    for name in names:
        assert name in str(err.value)


@needs_shakespeare
def test_tinyshakespeare_is_character_level_in_fairseq_layout():
    task = build_task("tinyshakespeare", root=str(SHARED), tokens_per_sample=32)
    text = (SHARED / "tinyshakespeare" / "input.txt").read_text()
    vocab = task.vocabulary
    assert vocab[:4] == SPECIAL_SYMBOLS and task.num_classes == len(vocab) == 4 + len(set(text))
    x, y = task.train.tensors
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])  # next-token targets
    assert "".join(vocab[i] for i in x[0].tolist()) == text[:32]
    cut = int(0.9 * len(text))
    assert "".join(vocab[i] for i in task.test.tensors[0][0].tolist()) == text[cut:cut + 32]


def test_wikitext_is_word_level_with_an_eos_per_line(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_text(" = Title = \n the cat sat \n the <unk> \n")
    (folder / "wiki.test.tokens").write_text(" the dog sat \n")
    task = build_task("wikitext2", root=str(tmp_path), tokens_per_sample=2)
    vocab = task.vocabulary
    # specials first (</s> and <unk> among them), then by count (= 2, the 2), then by symbol
    assert vocab == SPECIAL_SYMBOLS + ("=", "the", "Title", "cat", "sat")
    stream = torch.cat([task.test.tensors[0].reshape(-1), task.test.tensors[1].reshape(-1)[-1:]])
    assert stream.tolist() == [vocab.index("the"), UNK, vocab.index("sat"), vocab.index("</s>")][: stream.numel()]


def test_blocks_cut_non_overlapping_next_token_pairs():
    ds = blocks(torch.arange(10), 3)
    x, y = ds.tensors
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(blocks(torch.arange(100), 3, max_tokens=9)) == 3


def test_language_model_perplexity_is_exp_of_the_mean_nll():
    from quantbench.data import LanguageModelingTask

    v = 7
    data = blocks(torch.randint(0, v, (101,), generator=torch.Generator().manual_seed(0)), 10)
    task = LanguageModelingTask("toy", data, data, (10,), v)

    class Uniform(torch.nn.Module):
        def forward(self, tokens):
            return torch.zeros(*tokens.shape, v)

    result = task.evaluate(Uniform())
    assert result["perplexity"] == pytest.approx(v) and result["loss"] == pytest.approx(math.log(v))
    assert result["bits_per_token"] == pytest.approx(math.log2(v))


class _Jitter(torch.utils.data.Dataset):
    """A dataset with random augmentation from torch's generator (as torchvision's transforms)."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.full((3,), float(i)) + torch.rand(3), i % 4


def _batches(task, seed, epochs=2):
    return [[b.clone() for b in batch] for e in range(epochs) for batch in task.loader("train", 8, seed=seed + e)]


def test_batches_are_the_same_whatever_the_number_of_workers():
    """Order and augmentation come from the seed alone: 0, 1 or 2 worker processes (persistent
    across epochs) give the same batches; another seed gives other ones; the caller's global
    generator is left untouched."""
    from quantbench.data import Pipeline, Task

    def task(workers):
        return Task("jitter", _Jitter(), _Jitter(), (3,), 4, augmented=True,
                    pipeline=Pipeline(workers=workers, persistent_workers=True))

    torch.manual_seed(123)
    state = torch.get_rng_state()
    runs = {w: _batches(task(w), seed=5) for w in (0, 1, 2)}
    assert torch.equal(torch.get_rng_state(), state)
    for w in (1, 2):
        pairs = [(a, b) for ba, bb in zip(runs[0], runs[w], strict=True) for a, b in zip(ba, bb, strict=True)]
        assert all(torch.equal(a, b) for a, b in pairs)
    other = _batches(task(0), seed=6)
    assert not torch.equal(other[0][0], runs[0][0][0])


def test_the_shuffled_order_is_the_one_a_seeded_dataloader_gives():
    """Kept loaders, same order as before: DataLoader(shuffle=True, generator=Generator().manual_seed(s))."""
    from torch.utils.data import DataLoader, TensorDataset

    from quantbench.data import Task

    data = TensorDataset(torch.arange(37.0).unsqueeze(1), torch.arange(37))
    task = Task("t", data, data, (1,), 37)
    for seed in (0, 11):
        ours = torch.cat([y for _, y in task.loader("train", 5, seed=seed)])
        plain = torch.cat([y for _, y in DataLoader(data, batch_size=5, shuffle=True,
                                                    generator=torch.Generator().manual_seed(seed))])
        assert torch.equal(ours, plain)
    assert torch.equal(torch.cat([y for _, y in task.loader("test", 5)]), torch.arange(37))


@pytest.mark.parametrize("pin_memory, cuda, pinned", [(True, True, True), (False, True, False), (True, False, False)])
def test_batches_are_pinned_only_where_asked_and_a_gpu_is_there(monkeypatch, pin_memory, cuda, pinned):
    """config ``loaders.<task>.pin_memory``: page-locked batches for copies to a GPU, never without one."""
    from quantbench.data import Pipeline, Task

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    task = Task("jitter", _Jitter(), _Jitter(), (3,), 4, pipeline=Pipeline(pin_memory=pin_memory))
    assert task.loader("train", 4, seed=0).pin_memory is pinned
