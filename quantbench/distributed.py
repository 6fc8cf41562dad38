"""Several processes per job with ``torch.distributed``: the launch, the process group, each rank's
share of a global batch, gradient averaging, and what only rank 0 does.

A job asks for ``processes`` per node and ``nodes`` (config ``resources``); when their product is
above 1 the job's process is the **launcher**: it runs ``torch.distributed.run`` (torchrun) on the
same command line, whose workers are the ranks. Every rank runs the same code on the same seeds;
only rank 0 opens, writes and closes the MLflow run and the job's outputs. The launcher writes
nothing but a failure: when a rank fails, torchrun stops the others and raises
``ChildFailedError``, and the launcher closes the run rank 0 had opened (and left RUNNING) as
FAILED, naming the rank. Rank 0 hands the run's id to the launcher through a file
(:data:`RUN_ID_FILE_ENV`).

**Batches.** A training epoch is the permutation of the one-process run cut into global batches
of ``batch_size``; rank ``r`` of ``W`` takes ``batch[r::W]`` of each (:class:`ShardedBatches`).
The global batch, the learning rate and every other setting are as configured, whatever ``W`` is
(the rule: the configuration means the global batch, so a run on ``W`` processes is the one-process
run with its batches computed in ``W`` parts). Gradients are averaged over ranks (DDP) after each
rank weighted its mean loss by ``W · n_r / n`` (its share of the batch), so the averaged gradient
is that of the global batch's mean loss even when the last batch does not divide evenly.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

RUN_ID_FILE_ENV = "QUANTBENCH_RUN_ID_FILE"
T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True in a worker that torchrun started (it sets ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


_alone = False  # inside alone(): this process computes as if it were the only one


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() and not _alone else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() and not _alone else 1


@contextmanager
def alone() -> Iterator[None]:
    """Compute as a one-process job (no collective, no sharding) inside: what rank 0 does with a
    post-training method while the other ranks have left."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def is_main() -> bool:
    """Rank 0 (or the only process): the one that records."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the job's process group when torchrun started this process (NCCL on CUDA, gloo on CPU);
    returns this rank's device (``cuda:<LOCAL_RANK>`` on CUDA). A no-op in a one-process job."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): a job on "
                               f"GPUs runs one process per GPU (config resources: gpu = processes), or set device: cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_processes() -> int:
    """Processes of this job on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if launched_by_torchrun() else 1


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 only and broadcast to every rank (e.g. LC's C step)."""
    if world_size() == 1:
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (a no-op in a one-process job)."""
    if world_size() > 1:
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the ranks (in place; a no-op in a one-process job)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each gradient by its mean over the ranks: what DDP's reducer computes (a sum
    all-reduce divided by the world size), for parameters whose forward does not go through a
    DDP wrapper. One all-reduce of the flattened gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def share(batch_len: int, rank_: int, world: int) -> int:
    """How many of a global batch of ``batch_len`` samples rank ``rank_`` of ``world`` computes."""
    return len(range(rank_, batch_len, world))


class ShardedBatches(Sampler[list]):
    """Rank ``rank``'s share ``batch[rank::world]`` of each global batch of ``batch_size`` drawn
    from ``order`` (an :class:`~quantbench.data.EpochOrder`). Every rank yields one batch per global
    batch; a rank whose share of the last batch is empty gets that batch's first sample, which
    :func:`quantbench.training.loop.train_epoch` weights 0.

    ``torch.utils.data.DistributedSampler`` is not used: it shards the whole epoch and pads it to
    a multiple of ``world`` with repeated samples, so its last global batch is not the one-process
    run's."""

    def __init__(self, order: Sampler, batch_size: int, rank_: int, world: int) -> None:
        self.order, self.batch_size, self.rank, self.world = order, batch_size, rank_, world

    def epoch(self, seed: int | None) -> ShardedBatches:
        self.order.epoch(seed)
        return self

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[list]:
        keys = list(self.order)
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start:start + self.batch_size]
            yield batch[self.rank::self.world] or batch[:1]


def torchrun_config(worker_argv: list[str], nproc_per_node: int, nnodes: int = 1,
                    rdzv_endpoint: str = "") -> argparse.Namespace:
    """torchrun's (``torch.distributed.run``) parsed options for ``python -m quantbench.cli
    <worker_argv>`` on ``nproc_per_node`` ranks here, on ``nnodes`` nodes, no restarts. One node:
    ``--standalone`` (a free local port); several: the c10d rendezvous at ``rdzv_endpoint``
    (host:port of the first node), where each node's launcher joins."""
    from torch.distributed.run import get_args_parser

    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", "--max-restarts=0"]
    if nnodes == 1:
        args.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError(f"--nnodes {nnodes} needs --rdzv-endpoint host:port (the first node's address)")
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=quantbench"]
    config = get_args_parser().parse_args([*args, "-m", "quantbench.cli"])
    config.training_script_args = list(worker_argv)  # set here: torchrun's parser would read their options too
    return config


def launch(worker_argv: list[str], nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str = "") -> None:
    """Run the ranks under torchrun (:func:`torchrun_config`); returns when they all succeeded.
    Raises torchrun's ``ChildFailedError`` when a rank fails (after torchrun stopped the others),
    and its ``SignalException`` when this process is signalled (after stopping the ranks)."""
    from torch.distributed.run import run

    run(torchrun_config(worker_argv, nproc_per_node, nnodes, rdzv_endpoint))


def first_failure(error: BaseException) -> str:
    """A one-line reason from torchrun's ``ChildFailedError``: the first rank that failed, how
    (exit code or signal) and, when that rank recorded it, its error message."""
    rank_, failure = error.get_first_failure()
    how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message or "")
    message = message.strip().splitlines()[0] if message.strip() else ""
    return f"rank {rank_} failed ({how})" + (f": {message}" if message and "To enable traceback" not in message
                                              else "")
