"""Exponential moving average of the weights (DiffuSeq samples from it, rate 0.9999).

The average is kept in fp32 on each rank for the parameters that rank holds: the whole model
under ZeRO 0-2, and the rank's own partition (`ds_tensor`) under ZeRO-3.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


def _is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_tensor")


class EMA:
    def __init__(self, module: nn.Module, rate: float, warmup: bool = False):
        self.module = module
        self.rate = rate
        self.warmup = warmup
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.partitioned = any(_is_partitioned(p) for p in self.params)
        self.shadow = [self._local(p).detach().float().clone() for p in self.params]

    def _local(self, p: torch.Tensor) -> torch.Tensor:
        return p.ds_tensor if _is_partitioned(p) else p.data

    def rate_at(self, step: int) -> float:
        """The rate of the update after optimizer step `step` (1, 2, ...): with warm-up the average
        forgets its start quickly, then settles at `rate`."""
        return min(self.rate, (1 + step) / (10 + step)) if self.warmup else self.rate

    @torch.no_grad()
    def update(self, step: int) -> None:
        # shadow += (1 - rate) * (param - shadow), fused over every tensor
        torch._foreach_lerp_(self.shadow, [self._local(p).float() for p in self.params], 1.0 - self.rate_at(step))

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the module (in its dtype), restoring them after."""
        backup = [self._local(p).detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                self._local(p).copy_(s)
        try:
            yield self.module
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    self._local(p).copy_(b)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights of the whole module, fp32 on CPU (a collective under ZeRO-3: call on every rank)."""
        with self.swapped_in():
            if self.partitioned:
                import deepspeed

                with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                    return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}
            return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}
