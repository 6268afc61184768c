"""Process-group setup for 1 process or N under torchrun (NCCL on GPUs, gloo on CPU).

A plain `python -m diffusion.train` is a world of one: the rendezvous variables DeepSpeed
insists on are filled in, so it never falls back to MPI discovery.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(force_cpu: bool = False) -> DistEnv:
    """Join (or create) the default process group and pick this rank's device."""
    if "RANK" not in os.environ:  # no launcher: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and not force_cpu
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
    _skip_cpu_shm_build()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                device_id=device if use_cuda else None)
    return DistEnv(rank, local_rank, world_size, device)


def _skip_cpu_shm_build() -> None:
    # DeepSpeed's CPU backend JIT-compiles a shared-memory op (~35 s, needs g++) that only serves
    # inference all-reduce; training never uses it. Its CUDA backend builds nothing.
    import deepspeed.comm.torch  # noqa: F401

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any rank: a collective where there are several, so that all of them
    take the same branch."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    held = torch.tensor(int(flag), device=device)
    dist.all_reduce(held, op=dist.ReduceOp.MAX)
    return bool(held.item())


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
