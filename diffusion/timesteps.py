"""Which timesteps a training batch sees: uniform, or DiffuSeq's loss-aware resampling.

The loss-aware sampler keeps the last `history` losses of every timestep on the device and
samples t with probability proportional to sqrt(E[loss^2]), mixed with a little uniform mass.
Unlike DiffuSeq's, it never copies a value to the host: the history is a ring buffer updated with
scatters, in place, and "warmed up" is a tensor, so a training step has no host sync and can be
captured in a CUDA graph (train.cuda_graphs).
"""

from __future__ import annotations

import typing

import torch
import torch.distributed as dist

from .config import TimestepSamplerName


class UniformSampler:
    def __init__(self, num_steps: int, device: torch.device | str = "cpu"):
        self.num_steps = num_steps
        self.device = torch.device(device)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,) int64, importance weights (B,) float32)."""
        t = torch.randint(0, self.num_steps, (batch_size,), device=self.device)
        return t, torch.ones(batch_size, device=self.device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossAwareSampler(UniformSampler):
    def __init__(self, num_steps: int, device="cpu", history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_steps, device)
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(num_steps, history, dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(num_steps, dtype=torch.long, device=self.device)

    def probabilities(self) -> torch.Tensor:
        """(T,) sampling probabilities; uniform until every timestep has a full history, and while
        a loss in it is not finite (a diverged step: multinomial would stop the trainer with a
        device-side assert before its log line could say why)."""
        weights = self.losses.pow(2).mean(dim=-1).sqrt()
        weights = weights / weights.sum().clamp_min(1e-300)
        weights = weights * (1 - self.uniform_prob) + self.uniform_prob / self.num_steps
        usable = (self.counts >= self.history).all() & torch.isfinite(weights).all()
        return torch.where(usable, weights, torch.full_like(weights, 1.0 / self.num_steps))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True)
        return t, (1.0 / (self.num_steps * p[t])).float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record this micro-batch's per-sequence losses, from every rank, in arrival order."""
        t, losses = t.detach(), losses.detach().to(torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t_all = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            loss_all = [torch.empty_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(t_all, t)
            dist.all_gather(loss_all, losses)
            t, losses = torch.cat(t_all), torch.cat(loss_all)
        # rank of each item among the items of the same timestep, in order
        order = torch.sort(t, stable=True).indices
        t_sorted = t[order]
        # not bincount: on CUDA it reads the largest value back to the host
        n_per_t = torch.zeros(self.num_steps, dtype=torch.long, device=t.device)
        n_per_t.index_add_(0, t_sorted, torch.ones_like(t_sorted))
        group_start = torch.cumsum(n_per_t, 0) - n_per_t
        rank_in_group = torch.arange(len(t), device=t.device) - group_start[t_sorted]
        # only the last `history` items of a timestep survive; earlier ones would be overwritten anyway
        survives = rank_in_group >= n_per_t[t_sorted] - self.history
        slot = (self.counts[t_sorted] + rank_in_group) % self.history
        flat = t_sorted * self.history + slot
        flat = torch.where(survives, flat, torch.full_like(flat, -1))
        keep = flat >= 0
        # masked scatter without a host sync: dropped items write to a scratch row past the end
        scratch = torch.cat([self.losses.view(-1), torch.zeros(1, dtype=self.losses.dtype, device=self.losses.device)])
        target = torch.where(keep, flat, torch.full_like(flat, scratch.numel() - 1))
        scratch.scatter_(0, target, losses[order])
        self.losses.copy_(scratch[:-1].view(self.num_steps, self.history))  # in place: a CUDA graph holds its address
        self.counts += n_per_t

    def state_dict(self) -> dict:
        return {"losses": self.losses.cpu(), "counts": self.counts.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "lossaware": LossAwareSampler}
assert set(TIMESTEP_SAMPLERS) == set(typing.get_args(TimestepSamplerName)), "a sampler without its class, or a name without"


def make_sampler(name: str, num_steps: int, device) -> UniformSampler:
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose {', '.join(TIMESTEP_SAMPLERS)}")
    return TIMESTEP_SAMPLERS[name](num_steps, device)
