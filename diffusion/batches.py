"""This rank's micro-batches, epoch after epoch, in a seeded order that resumes exactly.

The data is already tokenized: two (N, L) int64 tensors. Each epoch is a permutation drawn from
`seed + epoch`; rank r takes every world_size-th index of it, so ranks never share a sequence and
all ranks see the same number of micro-batches. The state is (epoch, position): two integers.
"""

from __future__ import annotations

import torch


class BatchStream:
    def __init__(self, input_ids, input_mask, micro_batch: int, rank: int, world_size: int, seed: int, device):
        if len(input_ids) < micro_batch * world_size:
            raise ValueError(
                f"{len(input_ids)} training sequences are fewer than one micro-batch ({micro_batch}) per rank ({world_size})"
            )
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self.input_ids = input_ids.pin_memory() if pin else input_ids
        self.input_mask = input_mask.pin_memory() if pin else input_mask
        self.micro_batch, self.rank, self.world_size, self.seed = micro_batch, rank, world_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.input_ids), generator=generator)
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, input_mask) of the next micro-batch, each (micro_batch, L), on the device."""
        if self.position + self.micro_batch > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        index = self._order[self.position : self.position + self.micro_batch]
        self.position += self.micro_batch
        ids, mask = self.input_ids[index], self.input_mask[index]
        if self.device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(
                f"data position was saved by rank {state['rank']} of {state['world_size']}, "
                f"not rank {self.rank} of {self.world_size}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._epoch_order(self.epoch)
