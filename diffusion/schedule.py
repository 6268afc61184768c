"""Noise schedules and the Gaussian forward process, in DiffuSeq's conventions.

Coefficients are computed in float64 (as DiffuSeq does in numpy) and gathered per timestep
into float32 tensors. A respaced schedule keeps a subset of the timesteps, recomputes the betas
from the kept alpha-bars and remembers which original timestep each step stands for.
"""

from __future__ import annotations

import math
import typing

import torch

from .config import ScheduleName


def _from_alpha_bar(alpha_bar, steps: int, max_beta: float) -> list[float]:
    return [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]


def sqrt_betas(steps: int, max_beta: float) -> torch.Tensor:
    """DiffuSeq's default: alpha_bar(t) = 1 - sqrt(t + 1e-4)."""
    return torch.tensor(_from_alpha_bar(lambda t: 1 - math.sqrt(t + 0.0001), steps, max_beta), dtype=torch.float64)


def cosine_betas(steps: int, max_beta: float) -> torch.Tensor:
    """Nichol and Dhariwal's: alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2."""
    return torch.tensor(_from_alpha_bar(lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2, steps, max_beta),
                        dtype=torch.float64)


def linear_betas(steps: int, max_beta: float) -> torch.Tensor:
    """Ho et al.'s, scaled so that any T gives the same curve."""
    scale = 1000 / steps
    return torch.linspace(scale * 0.0001, scale * 0.02, steps, dtype=torch.float64)


SCHEDULES = {"sqrt": sqrt_betas, "cosine": cosine_betas, "linear": linear_betas}  # name -> (steps, max_beta) -> betas
assert set(SCHEDULES) == set(typing.get_args(ScheduleName)), "a schedule without its betas, or betas without a name"


def named_betas(name: str, steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """(steps,) float64 betas of the named schedule."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose {', '.join(SCHEDULES)}")
    return SCHEDULES[name](steps, max_beta)


class Schedule:
    """Everything the forward and reverse processes need, indexed by step 0..num_steps-1."""

    def __init__(self, betas: torch.Tensor, timestep_map: torch.Tensor | None = None, original_steps: int | None = None):
        self.betas = betas.to(torch.float64)
        self.num_steps = len(betas)
        self.original_steps = original_steps or self.num_steps
        # the model always sees the original timestep index, rescaled to [0, 1000)
        self.timestep_map = timestep_map if timestep_map is not None else torch.arange(self.num_steps)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # DiffuSeq's fixed ("large") reverse variance: the posterior variance at step 1, then beta_t
        self.reverse_variance = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
        self._device_cache: dict = {}

    @classmethod
    def named(cls, name: str, steps: int) -> "Schedule":
        return cls(named_betas(name, steps))

    def respaced(self, steps: int) -> "Schedule":
        """A schedule over `steps` evenly spaced timesteps of this one (DDPM on the kept steps)."""
        if steps >= self.num_steps:
            return self
        kept = torch.linspace(0, self.num_steps - 1, steps).round().long().unique()
        kept_alpha_bars = self.alphas_cumprod[kept]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_alpha_bars[:-1]])
        return Schedule(1 - kept_alpha_bars / previous, self.timestep_map[kept], self.original_steps)

    def cache_on(self, device: torch.device) -> None:
        """Put every table a training step reads on `device` now: a compiled caller then finds them
        there (filling the cache inside a compiled graph changes its guards and recompiles it once;
        a table copied from the host inside it cannot be captured in a CUDA graph)."""
        for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "timestep_map"):
            self._table(name, device)

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """The table `name` on `device`, cached; coefficients as float32, the timestep map as it is."""
        key = (name, device)
        if key not in self._device_cache:
            table = getattr(self, name)
            self._device_cache[key] = table.to(device=device, dtype=torch.float32 if table.is_floating_point() else None)
        return self._device_cache[key]

    def coefficient(self, name: str, step: int, sqrt: bool = False) -> float:
        """The table `name` at `step` as a step on the card reads it (float32), or its float32
        square root with `sqrt`: the same number as a Python float."""
        value = getattr(self, name)[step].to(torch.float32)
        return float(value.sqrt() if sqrt else value)

    def gather(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """The coefficient `name` at steps t (B,), float32, shaped (B, 1, ..., 1) to broadcast over ndim dims."""
        return self._table(name, t.device)[t].view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor, rescale: bool = True, floor: float = 0.0) -> torch.Tensor:
        """What the denoiser is told: the original timestep, scaled to [0, 1000) as DiffuSeq does;
        at least `floor` of the way to the last original timestep (sample.time_floor)."""
        original = self._table("timestep_map", t.device)[t]
        if floor > 0:
            original = original.clamp(min=round(floor * (self.original_steps - 1)))
        return original.float() * (1000.0 / self.original_steps) if rescale else original

    def q_sample(self, z_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) noise."""
        return self.gather("sqrt_alphas_cumprod", t, z_0.ndim) * z_0 + self.gather(
            "sqrt_one_minus_alphas_cumprod", t, z_0.ndim
        ) * noise

    def q_sample_share(self, z_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, share: float) -> torch.Tensor:
        """z_0 forward-diffused with `share` of step t's noise variance: sqrt(1 - share (1 - abar_t)) z_0
        + sqrt(share (1 - abar_t)) noise (share 1: q_sample, bit for bit)."""
        if share == 1:
            return self.q_sample(z_0, t, noise)
        std = share**0.5 * self.gather("sqrt_one_minus_alphas_cumprod", t, z_0.ndim)
        return (1 - std**2).sqrt() * z_0 + std * noise

    def posterior_mean(self, z_0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(z_{t-1} | z_t, z_0)."""
        return self.gather("posterior_mean_coef1", t, z_t.ndim) * z_0 + self.gather("posterior_mean_coef2", t, z_t.ndim) * z_t
