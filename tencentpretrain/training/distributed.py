"""Joining the process group the launcher describes (torchrun, the deepspeed launcher, or none), where this process
sits in it (``DistInfo``), and seeding."""

from __future__ import annotations

import os
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist

from tencentpretrain.training.logging import note
from tencentpretrain.training.options import TrainOptions


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over all ranks (float64 on the CPU side; a collective: every rank must call it)."""
        if self.world_size == 1:
            return list(values)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()



def init_distributed(opts: TrainOptions) -> DistInfo:
    """Join the process group the launcher describes (env RANK/WORLD_SIZE/LOCAL_RANK); none for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", opts.local_rank or 0))
    device = _device(opts, local)
    backend = opts.backend or ("nccl" if device.type == "cuda" else "gloo")
    if opts.deepspeed:
        import deepspeed

        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        deepspeed.init_distributed(dist_backend=backend)
        _unlink_shared_buffer(rank, world)
    elif world > 1:
        dist.init_process_group(backend)
    if opts.world_size and opts.world_size != world:
        note(f"--world_size {opts.world_size} ignored: the launcher started {world} process(es)")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def leave_distributed() -> None:
    """Leave the process group once every rank is done (a barrier, then ``destroy_process_group``); a no-op for
    one process. See :func:`end_process` for the exit itself."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_process(status: int) -> NoReturn:
    """Exit with ``status``; a rank of a multi-process run (``WORLD_SIZE`` > 1) without the C++ teardown.

    At interpreter exit a rank whose work is done (outputs written, group destroyed) sometimes aborts in a native
    library's static destructors ("terminate called without an active exception", SIGABRT: gloo's and DeepSpeed's
    threads on the CPU), which turned finished torchrun and deepspeed runs into failures. Such a rank flushes its
    streams and leaves with ``os._exit``; nothing of ours is left to run then (files are closed, no threads).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _unlink_shared_buffer(rank: int, world: int) -> None:
    """Remove the name of the buffer DeepSpeed's CPU all-reduce maps in /dev/shm for this rank.

    DeepSpeed creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` when it joins the group
    and never unlinks it: every run on the CPU would leave 64 MiB of RAM behind per rank. Once every rank has mapped
    every peer's buffer (the barrier), the names are no longer needed and the mappings stay valid.
    """
    if world > 1 and dist.is_initialized():
        dist.barrier()
    where = f"{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}"
    Path("/dev/shm", f"deepspeed_allreduce_buffer_{os.getuid()}_{where}_{rank}").unlink(missing_ok=True)


def _device(opts: TrainOptions, local_rank: int) -> torch.device:
    """``--device``, else this rank's GPU, else the CPU (a bare ``--device cuda`` means this rank's own GPU)."""
    cuda = torch.cuda.is_available()
    device = torch.device(opts.device) if opts.device else torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) alike on every rank."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
