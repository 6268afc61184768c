"""This rank's micro-batches, epoch after epoch, in a seeded order that resumes exactly.

The data is already tokenized: two (N, L) int64 tensors. Each epoch is a permutation drawn from
`seed + epoch`; rank r takes every world_size-th index of it, so ranks never share a sequence and
all ranks see the same number of micro-batches. The state is (epoch, position): two integers.

With `widths` (trimmed sequences, data.trim), the epoch's permutation is cut into pools of
POOL micro-batches, each pool sorted by width and split into micro-batches, and the micro-batches
are shuffled: every sequence still comes once an epoch, and a micro-batch is cut to the width of
its widest sequence (`data.batch_width`) instead of carrying seq_len positions.

The token tensors and each epoch's order live on the training device: a micro-batch is one
gather there, with no copy from the host a step (a CUDA graph of the step gathers it itself,
from the indices `next_index` gives). Only the widths stay on the host, which cuts the batch.
"""

from __future__ import annotations

import torch

from .data import batch_width

POOL = 64  # micro-batches sorted together: near-uniform widths, yet batches still vary in content


class BatchStream:
    def __init__(self, input_ids, input_mask, micro_batch: int, rank: int, world_size: int, seed: int, device,
                 widths: torch.Tensor | None = None):
        if len(input_ids) < micro_batch * world_size:
            raise ValueError(
                f"{len(input_ids)} training sequences are fewer than one micro-batch ({micro_batch}) per rank ({world_size})"
            )
        self.device = torch.device(device)
        self.input_ids, self.input_mask = input_ids.to(self.device), input_mask.to(self.device)
        self.widths = widths.cpu() if widths is not None else None
        self.seq_len = input_ids.shape[1]
        self.micro_batch, self.rank, self.world_size, self.seed = micro_batch, rank, world_size, seed
        self.epoch, self.position = 0, 0
        self._set_order(0)

    def _set_order(self, epoch: int) -> None:
        self._order = self._epoch_order(epoch)  # on the host, for the widths
        self._order_on_device = self._order.to(self.device)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.input_ids), generator=generator)
        per_rank = len(order) // self.world_size
        order = order[self.rank :: self.world_size][:per_rank]
        if self.widths is None:
            return order
        batches = []
        order = order[: len(order) - len(order) % self.micro_batch]  # whole micro-batches only
        for pool in order.split(POOL * self.micro_batch):
            by_width = pool[torch.sort(self.widths[pool], stable=True).indices]
            batches += list(by_width.split(self.micro_batch))
        shuffled = torch.randperm(len(batches), generator=generator)
        return torch.cat([batches[i] for i in shuffled.tolist()])

    def next_index(self) -> tuple[torch.Tensor, int]:
        """(the next micro-batch's sequence indices (micro_batch,) on the device, its width)."""
        if self.position + self.micro_batch > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._set_order(self.epoch)
        span = slice(self.position, self.position + self.micro_batch)
        self.position += self.micro_batch
        width = self.seq_len if self.widths is None else batch_width(self.widths[self._order[span]], self.seq_len)
        return self._order_on_device[span], width

    def gather(self, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, input_mask), each (len(index), width), of the sequences `index` names."""
        return self.input_ids[index, :width], self.input_mask[index, :width]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, input_mask) of the next micro-batch, each (micro_batch, width), on the device."""
        return self.gather(*self.next_index())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(
                f"data position was saved by rank {state['rank']} of {state['world_size']}, "
                f"not rank {self.rank} of {self.world_size}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._set_order(self.epoch)
