"""How reverse diffusion moves z from one step to the next: one class a solver, registered by name
in SOLVERS.

- ddpm (DiffuSeq): z_{t-1} ~ N(posterior_mean(z_0, z_t), fixed variance);
- ddim: z_{t-1} = sqrt(abar') z_0 + sqrt(1 - abar' - sigma^2) eps + sigma noise, with
  sigma = eta * sqrt(posterior variance) (eta = 0: deterministic; eta = 1: DDPM's mean);
- dpm++2m: DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order solver for an
  x0-predicting model; its first step (no history yet) is DDIM's with eta = 0.

After the step at t = 0 every solver holds the (rounded) z_0 prediction. Importing this module
needs no torch: the config's rules (which keys a solver reads) come from here.
"""

from __future__ import annotations

import math
import typing

from .config import Config, SampleConfig, SolverName, require


class Solver:
    name = ""
    reads_eta = False  # sample.eta means something to it
    min_steps = 1

    def __init__(self, sample: SampleConfig):
        self.eta = sample.eta

    @classmethod
    def check(cls, cfg: Config) -> None:
        """The config rules of this solver (ConfigError naming the key)."""
        s = cfg.sample
        readers = " or ".join(name for name, solver in SOLVERS.items() if solver.reads_eta)
        require(s.eta == 0 or cls.reads_eta, "sample.eta", f"is read by the {readers} solver only, not {cls.name!r}")
        require((s.steps or cfg.diffusion.steps) >= cls.min_steps, "sample.steps", f"{cls.name} needs at least "
                f"{cls.min_steps} steps")

    def step(self, schedule, z, predicted_z_0, step: int, t, randn_like):
        """z at step - 1 from z at `step` and the (rounded) z_0 prediction; z_0 itself at step 0."""
        raise NotImplementedError


class DDPM(Solver):
    name = "ddpm"

    def step(self, schedule, z, predicted_z_0, step, t, randn_like):
        mean = schedule.posterior_mean(predicted_z_0, z, t)
        return mean + schedule.gather("reverse_variance", t, z.ndim).sqrt() * randn_like(z) if step > 0 else mean


class DDIM(Solver):
    name, reads_eta, min_steps = "ddim", True, 2

    def step(self, schedule, z, predicted_z_0, step, t, randn_like):
        if step == 0:
            return predicted_z_0
        return ddim_step(schedule, z, predicted_z_0, step, self.eta, randn_like(z) if self.eta else None)


class DPMSolver2M(Solver):
    name, min_steps = "dpm++2m", 2

    def __init__(self, sample: SampleConfig):
        super().__init__(sample)
        self.previous_z_0 = None  # the last step's prediction: the second order's history

    def step(self, schedule, z, predicted_z_0, step, t, randn_like):
        if step == 0:
            return predicted_z_0
        z, self.previous_z_0 = dpm_solver_2m_step(schedule, z, predicted_z_0, step, self.previous_z_0), predicted_z_0
        return z


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DDPM, DDIM, DPMSolver2M)}
assert set(SOLVERS) == set(typing.get_args(SolverName)), "a solver without its class, or a class without its name"


def _abar(schedule, step: int) -> float:
    return float(schedule.alphas_cumprod[step])


def ddim_step(schedule, z, predicted_z_0, step: int, eta: float = 0.0, noise=None):
    """z at step-1 from z at `step` (> 0) and the z_0 prediction: DDIM (Song et al. 2021), with
    sigma = eta * sqrt(posterior variance); eta = 1 gives exactly DDPM's posterior mean."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    eps = (z - abar**0.5 * predicted_z_0) / (1 - abar) ** 0.5
    sigma = eta * float(schedule.posterior_variance[step]) ** 0.5
    z_next = abar_next**0.5 * predicted_z_0 + max(1 - abar_next - sigma**2, 0.0) ** 0.5 * eps
    return z_next + sigma * noise if noise is not None and sigma > 0 else z_next


def _log_snr(schedule, step: int) -> float:
    """lambda = log(alpha / sigma) at `step`, with alpha = sqrt(abar), sigma = sqrt(1 - abar)."""
    abar = _abar(schedule, step)
    return 0.5 * math.log(abar / (1 - abar))


def dpm_solver_2m_step(schedule, z, predicted_z_0, step: int, previous_z_0):
    """z at step-1 from z at `step` (> 0): DPM-Solver++(2M). With h = lambda' - lambda,
    z' = (sigma'/sigma) z - alpha' (e^-h - 1) D, where D = z_0 (first order, = DDIM eta 0) or,
    with the previous step's prediction, D = (1 + 1/2r) z_0 - (1/2r) z_0_prev, r = h_prev / h."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    h = _log_snr(schedule, step - 1) - _log_snr(schedule, step)
    direction = predicted_z_0
    if previous_z_0 is not None:
        r = (_log_snr(schedule, step) - _log_snr(schedule, step + 1)) / h
        direction = (1 + 1 / (2 * r)) * predicted_z_0 - (1 / (2 * r)) * previous_z_0
    ratio = ((1 - abar_next) / (1 - abar)) ** 0.5
    return ratio * z - abar_next**0.5 * math.expm1(-h) * direction
