"""Tasks: a dataset split, its loss and its metric. One registry, one builder per task.

One job per module: :mod:`~quantbench.data.tasks` (what a task is, its loaders and their seeded
order and augmentation, :func:`build_task`), :mod:`~quantbench.data.datasets` (the builders,
registered by ``@register_task`` when this package is imported, and their file helpers: md5
checks, the IDX reader, the stratified split), :mod:`~quantbench.data.text` (language-modelling
token streams: fairseq's vocabulary layout, encoding, blocks).

Every builder takes ``root`` (where its files live) and ``download`` (allow a download; nothing
touches the network otherwise). torchvision is imported only by the builders that need it.
"""

from quantbench.data.datasets import (
    CIFAR_STATS,
    IMAGENET_STATS,
    MNIST_MEAN,
    MNIST_STD,
    MNIST_T10K,
    TASK_SHAPES,
    TINYSHAKESPEARE_MD5,
    TINYSHAKESPEARE_URL,
    WIKITEXT_URLS,
    check_md5,
    cifar10,
    cifar100,
    digits,
    fashion_mnist,
    imagenet,
    missing_files,
    mnist,
    mnist_t10k,
    read_idx,
    tinyshakespeare,
    wikitext2,
    wikitext103,
)
from quantbench.data.tasks import (
    EpochOrder,
    LanguageModelingTask,
    Pipeline,
    SeededSamples,
    Task,
    available_tasks,
    build_task,
)
from quantbench.data.text import SPECIAL_SYMBOLS, UNK, blocks, build_vocabulary, encode, read_wikitext

__all__ = [
    "CIFAR_STATS", "IMAGENET_STATS", "MNIST_MEAN", "MNIST_STD", "MNIST_T10K", "SPECIAL_SYMBOLS", "TASK_SHAPES",
    "TINYSHAKESPEARE_MD5", "TINYSHAKESPEARE_URL", "UNK", "WIKITEXT_URLS", "EpochOrder", "LanguageModelingTask",
    "Pipeline", "SeededSamples", "Task", "available_tasks", "blocks", "build_task", "build_vocabulary", "check_md5",
    "cifar10", "cifar100", "digits", "encode", "fashion_mnist", "imagenet", "missing_files", "mnist", "mnist_t10k",
    "read_idx", "read_wikitext", "tinyshakespeare", "wikitext103", "wikitext2",
]
