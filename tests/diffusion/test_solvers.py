"""Few-step solvers (sample.solver): their closed forms, and the source positions of each noising mode."""

import pytest
import torch

from diffusion.config import ConfigError
from diffusion.sampling import sample_tokens
from diffusion.schedule import Schedule
from diffusion.solvers import SOLVERS, ddim_step, dpm_solver_2m_step
from helpers import decoding
from tests.diffusion.test_noising import record_states, source_residual

T = 200


def test_ddim_with_eta_one_takes_ddpm_posterior_mean_at_every_step():
    schedule = Schedule.named("sqrt", T)
    torch.manual_seed(0)
    z, z_0 = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    for step in range(1, T):
        t = torch.full((3,), step)
        torch.testing.assert_close(ddim_step(schedule, z, z_0, step, eta=1.0), schedule.posterior_mean(z_0, z, t))


def test_ddim_with_eta_one_adds_the_posterior_standard_deviation():
    schedule = Schedule.named("sqrt", T)
    z, z_0, noise = torch.randn(2, 4), torch.randn(2, 4), torch.ones(2, 4)
    step = 57
    mean = ddim_step(schedule, z, z_0, step, eta=1.0)
    sigma = schedule.posterior_variance[step].sqrt().item()
    torch.testing.assert_close(ddim_step(schedule, z, z_0, step, 1.0, noise) - mean, torch.full((2, 4), sigma))


def test_dpm_solver_first_step_is_ddim_with_eta_zero():
    schedule = Schedule.named("sqrt", T).respaced(20)
    z, z_0 = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    for step in (19, 10, 1):
        torch.testing.assert_close(dpm_solver_2m_step(schedule, z, z_0, step, None), ddim_step(schedule, z, z_0, step))


def test_dpm_solver_second_order_step_extrapolates_the_last_two_estimates():
    """D = (1 + 1/2r) x0 - (1/2r) x0_prev with r = h_prev / h, in log-SNR lambda = log(alpha / sigma)."""
    schedule = Schedule.named("sqrt", T).respaced(20)
    z, z_0, previous = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    abar = schedule.alphas_cumprod
    lam = lambda s: 0.5 * torch.log(abar[s] / (1 - abar[s])).item()  # noqa: E731
    step = 12
    h, h_prev = lam(step - 1) - lam(step), lam(step) - lam(step + 1)
    direction = (1 + h / (2 * h_prev)) * z_0 - h / (2 * h_prev) * previous
    expected = ((1 - abar[step - 1]) / (1 - abar[step])).sqrt().item() * z \
        + abar[step - 1].sqrt().item() * (1 - torch.exp(torch.tensor(-h)).item()) * direction
    torch.testing.assert_close(dpm_solver_2m_step(schedule, z, z_0, step, previous), expected)


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_deterministic_solvers_follow_the_exact_trajectory_of_a_perfect_denoiser(solver):
    """If every estimate is the true x0, z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at every solver step."""
    schedule = Schedule.named("sqrt", T).respaced(10)
    torch.manual_seed(0)
    z_0, eps = torch.randn(2, 6, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
    on_path = lambda s: schedule.alphas_cumprod[s].sqrt() * z_0 + (1 - schedule.alphas_cumprod[s]).sqrt() * eps  # noqa: E731
    z, previous = on_path(9), None
    for step in range(9, 0, -1):
        if solver == "ddim":
            z = ddim_step(schedule, z, z_0, step)
        else:
            z, previous = dpm_solver_2m_step(schedule, z, z_0, step, previous), z_0
        torch.testing.assert_close(z, on_path(step - 1))


def record(denoiser, batch, solver, noising, full_mode):
    """The states of a 10-step solver run: (schedule, states, clean embedding, source mask, tokens)."""
    schedule = Schedule.named("sqrt", T).respaced(10)
    return schedule, *record_states(denoiser, batch, noising, full_mode, schedule, solver)


@pytest.mark.parametrize("solver", SOLVERS)
def test_target_mode_keeps_the_clean_source_at_every_solver_step(batch, denoiser, solver):
    _, states, emb, src, tokens = record(denoiser, batch, solver, "target", "conditional")
    assert sorted(states) == list(range(10))
    for z in states.values():
        assert torch.equal(z[src], emb[src])
    assert tokens.shape == batch[0].shape


@pytest.mark.parametrize("solver", SOLVERS)
def test_conditional_mode_puts_the_source_back_forward_diffused_to_each_solver_step(batch, denoiser, solver):
    schedule, states, emb, src, _ = record(denoiser, batch, solver, "full", "conditional")
    for step, z in states.items():
        residual = source_residual(schedule, step, z, emb, src)  # at the respaced step's own abar
        assert abs(residual.mean().item()) < 0.15 and 0.85 < residual.std().item() < 1.15, step


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_joint_mode_denoises_the_source_with_the_solver(batch, denoiser, solver):
    schedule, states, emb, src, _ = record(denoiser, batch, solver, "full", "joint")
    # an untrained denoiser's source is far from the forward-diffused clean one near the end
    assert source_residual(schedule, 1, states[1], emb, src).std() > 2


def test_deterministic_solvers_depend_on_the_first_noise_alone(batch, denoiser):
    """The same z_T and two generators that differ from the first step on: a deterministic solver
    (DDIM with eta 0, DPM-Solver++) gives the same tokens; DDPM, which draws at every step, does
    not (so the comparison can fail)."""
    ids, mask = batch
    schedule = Schedule.named("sqrt", T).respaced(10)

    def tokens(solver, later_seed):
        generator = torch.Generator().manual_seed(1)  # z_T is drawn from this seed in either run

        def reseed(step, z):
            if step == schedule.num_steps - 1:
                generator.manual_seed(later_seed)  # every draw after z_T comes from another stream

        return sample_tokens(denoiser, schedule, ids, mask, decoding(solver=solver), generator=generator, on_step=reseed)

    for solver in ("ddim", "dpm++2m"):
        assert torch.equal(tokens(solver, 2), tokens(solver, 3)), solver
    assert not torch.equal(tokens("ddpm", 2), tokens("ddpm", 3))


def test_the_solvers_are_the_configs_names_and_an_unknown_one_is_refused():
    assert list(SOLVERS) == ["ddpm", "ddim", "dpm++2m"]
    with pytest.raises(ConfigError, match="sample.solver: must be one of 'ddpm', 'ddim', 'dpm\\+\\+2m', got 'euler'"):
        decoding(solver="euler")


def told_timesteps(denoiser, batch, monkeypatch, **keys):
    """The timesteps the denoiser is told at each step of a 10-step DPM-Solver++ decode."""
    told = []
    forward = type(denoiser).forward
    monkeypatch.setattr(denoiser, "forward", lambda z, t, *a, **k: (told.append(t.clone()), forward(denoiser, z, t, *a, **k))[1])
    ids, mask = batch
    tokens = sample_tokens(denoiser, Schedule.named("sqrt", T).respaced(10), ids, mask,
                           decoding(solver="dpm++2m", **keys), generator=torch.Generator().manual_seed(1))
    return torch.stack(told)[:, 0].tolist(), tokens


def test_a_time_floor_tells_the_denoiser_at_least_that_timestep_and_none_changes_nothing(batch, denoiser, monkeypatch):
    schedule = Schedule.named("sqrt", T).respaced(10)
    true = schedule.model_timesteps(torch.arange(9, -1, -1)).tolist()  # the steps in the order they run
    plain, plain_tokens = told_timesteps(denoiser, batch, monkeypatch)
    assert plain == true
    half, _ = told_timesteps(denoiser, batch, monkeypatch, time_floor=0.5)
    assert half == [max(t, round(0.5 * (T - 1)) * 1000 / T) for t in true] and half != true
    # Dinoiser's condition-enhanced denoiser: told the largest timestep throughout, so it decodes
    # something else from the same noise
    largest, largest_tokens = told_timesteps(denoiser, batch, monkeypatch, time_floor=1.0)
    assert largest == [(T - 1) * 1000 / T] * 10
    assert not torch.equal(largest_tokens, plain_tokens)


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_a_time_floor_outside_zero_to_one_is_refused(floor):
    with pytest.raises(ConfigError, match=f"sample.time_floor: must be in \\[0, 1\\], got {floor}"):
        decoding(time_floor=floor)
