"""How reverse diffusion moves z from one step to the next: one class a solver, registered by name
in SOLVERS.

- ddpm (DiffuSeq): z_{t-1} ~ N(posterior_mean(z_0, z_t), fixed variance);
- ddim: z_{t-1} = sqrt(abar') z_0 + sqrt(1 - abar' - sigma^2) eps + sigma noise, with
  sigma = eta * sqrt(posterior variance) (eta = 0: deterministic; eta = 1: DDPM's mean);
- dpm++2m: DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order solver for an
  x0-predicting model; its first step (no history yet) is DDIM's with eta = 0.

A step is the step's numbers (`coefficients`, floats from the schedule) put into one tensor
formula (`combine`), which takes those numbers as floats or as 0-d tensors on the card: a CUDA
graph records the formula once and is replayed with each step's numbers (sample_graphs.py). The
solver's history (dpm++2m: the last z_0 estimate) is passed in and handed back, not kept.

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
    keeps_history = False  # the next step reads this step's z_0 estimate
    ends_on_estimate = True  # the step at t = 0 returns the z_0 estimate as it is

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

    def draws_noise(self, step: int) -> bool:
        """Whether the step draws fresh N(0, 1) noise shaped like z."""
        return False

    def coefficients(self, schedule, step: int) -> tuple[float, ...]:
        """The numbers of the step from `step` to step - 1, for `combine`."""
        raise NotImplementedError

    def combine(self, z, predicted_z_0, history, noise, coefficients):
        """z at step - 1 from z, the (rounded) z_0 estimate, the history (None before the first
        step), the step's noise (None where it draws none) and its coefficients."""
        raise NotImplementedError

    def step(self, schedule, z, predicted_z_0, history, step: int, randn_like, coefficients=None):
        """(z at step - 1, the history the next step reads) from z at `step`; z_0 itself at step 0.
        `coefficients`: the step's numbers, given as tensors (None: worked out here)."""
        if step == 0 and self.ends_on_estimate:
            return predicted_z_0, None
        noise = randn_like(z) if self.draws_noise(step) else None
        if coefficients is None:
            coefficients = self.coefficients(schedule, step)
        z = self.combine(z, predicted_z_0, history, noise, coefficients)
        return z, predicted_z_0 if self.keeps_history else None


class DDPM(Solver):
    name, ends_on_estimate = "ddpm", False  # at t = 0: the posterior mean, without noise

    def draws_noise(self, step):
        return step > 0

    def coefficients(self, schedule, step):
        # the float32 values a step on the card reads from the schedule's tables
        return (schedule.coefficient("posterior_mean_coef1", step), schedule.coefficient("posterior_mean_coef2", step),
                schedule.coefficient("reverse_variance", step, sqrt=True))

    def combine(self, z, predicted_z_0, history, noise, coefficients):
        coef_z_0, coef_z, sigma = coefficients
        mean = coef_z_0 * predicted_z_0 + coef_z * z
        return mean if noise is None else mean + sigma * noise


class DDIM(Solver):
    name, reads_eta, min_steps = "ddim", True, 2

    def draws_noise(self, step):
        return step > 0 and self.eta != 0

    def coefficients(self, schedule, step):
        return ddim_coefficients(schedule, step, self.eta)

    def combine(self, z, predicted_z_0, history, noise, coefficients):
        return ddim_combine(z, predicted_z_0, noise, coefficients)


class DPMSolver2M(Solver):
    name, min_steps, keeps_history = "dpm++2m", 2, True

    def coefficients(self, schedule, step):
        return dpm_solver_2m_coefficients(schedule, step)

    def combine(self, z, predicted_z_0, history, noise, coefficients):
        return dpm_solver_2m_combine(z, predicted_z_0, history, coefficients)


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DDPM, DDIM, DPMSolver2M)}
assert set(SOLVERS) == set(typing.get_args(SolverName)), "a solver without its class, or a class without its name"


def _abar(schedule, step: int) -> float:
    return float(schedule.alphas_cumprod[step])


def ddim_coefficients(schedule, step: int, eta: float = 0.0) -> tuple[float, ...]:
    """DDIM's numbers from `step` (> 0) to step - 1, with sigma = eta * sqrt(posterior variance)."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    sigma = eta * float(schedule.posterior_variance[step]) ** 0.5
    return abar**0.5, (1 - abar) ** 0.5, abar_next**0.5, max(1 - abar_next - sigma**2, 0.0) ** 0.5, sigma


def ddim_combine(z, predicted_z_0, noise, coefficients):
    sqrt_abar, sqrt_one_minus_abar, sqrt_abar_next, eps_scale, sigma = coefficients
    eps = (z - sqrt_abar * predicted_z_0) / sqrt_one_minus_abar
    z_next = sqrt_abar_next * predicted_z_0 + eps_scale * eps
    return z_next if noise is None else z_next + sigma * noise


def ddim_step(schedule, z, predicted_z_0, step: int, eta: float = 0.0, noise=None):
    """z at step-1 from z at `step` (> 0) and the z_0 prediction: DDIM (Song et al. 2021), with
    sigma = eta * sqrt(posterior variance); eta = 1 gives exactly DDPM's posterior mean."""
    coefficients = ddim_coefficients(schedule, step, eta)
    return ddim_combine(z, predicted_z_0, noise if coefficients[-1] > 0 else None, coefficients)


def _log_snr(schedule, step: int) -> float:
    """lambda = log(alpha / sigma) at `step`, with alpha = sqrt(abar), sigma = sqrt(1 - abar)."""
    abar = _abar(schedule, step)
    return 0.5 * math.log(abar / (1 - abar))


def dpm_solver_2m_coefficients(schedule, step: int) -> tuple[float, ...]:
    """DPM-Solver++(2M)'s numbers from `step` (> 0) to step - 1: sigma'/sigma, alpha' (e^-h - 1),
    and the second order's weights (1 + 1/2r, 1/2r) of the two estimates (1, 0 at the first step)."""
    abar, abar_next = _abar(schedule, step), _abar(schedule, step - 1)
    h = _log_snr(schedule, step - 1) - _log_snr(schedule, step)
    if step + 1 < schedule.num_steps:
        r = (_log_snr(schedule, step) - _log_snr(schedule, step + 1)) / h
        weights = 1 + 1 / (2 * r), 1 / (2 * r)
    else:  # the first step: there is no earlier estimate
        weights = 1.0, 0.0
    return ((1 - abar_next) / (1 - abar)) ** 0.5, abar_next**0.5 * math.expm1(-h), *weights


def dpm_solver_2m_combine(z, predicted_z_0, previous_z_0, coefficients):
    ratio, step_scale, weight, previous_weight = coefficients
    direction = predicted_z_0 if previous_z_0 is None else weight * predicted_z_0 - previous_weight * previous_z_0
    return ratio * z - step_scale * direction


def dpm_solver_2m_step(schedule, z, predicted_z_0, step: int, previous_z_0):
    """z at step-1 from z at `step` (> 0): DPM-Solver++(2M). With h = lambda' - lambda,
    z' = (sigma'/sigma) z - alpha' (e^-h - 1) D, where D = z_0 (first order, = DDIM eta 0) or,
    with the previous step's prediction, D = (1 + 1/2r) z_0 - (1/2r) z_0_prev, r = h_prev / h."""
    return dpm_solver_2m_combine(z, predicted_z_0, previous_z_0, dpm_solver_2m_coefficients(schedule, step))
