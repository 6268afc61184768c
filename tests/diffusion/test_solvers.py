"""Few-step solvers (sample.solver): their closed forms, and the source positions of each noising mode."""

import pytest
import torch

from diffusion.sampling import ddim_step, dpm_solver_2m_step, sample_tokens
from diffusion.schedule import Schedule
from helpers import REPO
from tests.diffusion.test_noising import record_states, source_residual

T = 200
SOLVERS = ["ddpm", "ddim", "dpm++2m"]


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


def test_deterministic_solvers_give_the_same_tokens_for_the_same_seed(batch, denoiser):
    for solver in ("ddim", "dpm++2m"):
        first = record(denoiser, batch, solver, "target", "conditional")[-1]
        assert torch.equal(first, record(denoiser, batch, solver, "target", "conditional")[-1])


def test_sampler_refuses_an_unknown_solver(batch, denoiser):
    with pytest.raises(ValueError, match="solver='euler'"):
        sample_tokens(denoiser, Schedule.named("sqrt", 5), *batch, solver="euler")


@pytest.mark.parametrize("sets, key, message", [
    (["sample.solver=euler"], "sample.solver", "must be one of"),
    (["sample.solver=dpm++2m", "sample.steps=1"], "sample.steps", "at least 2 steps"),
    (["sample.eta=0.5"], "sample.eta", "ddim solver only"),
    (["sample.solver=ddim", "sample.eta=1.5"], "sample.eta", r"in \[0, 1\]"),
])
def test_solver_keys_are_validated_with_named_errors(sets, key, message):
    from pipeline.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/qqp_target.yaml", sets)


def test_status_estimates_the_sample_stage_from_the_tasks_progress(tmp_path):
    from diffusion import atomic
    from pipeline.layout import RunLayout
    from pipeline.spec import load_spec
    from pipeline.status import sampling_progress

    spec = load_spec(REPO / "jobs/demo_target.yaml",
                     ["sample.solver=dpm++2m", "sample.steps=20", "sample.seeds=[1,2]"])
    layout = RunLayout(tmp_path, "run")
    rows = [{"step": 100, "state": "done"}, {"step": 200, "state": "running"}, {"step": 300, "state": "waiting-for-input"}]
    assert sampling_progress(layout, spec, rows) == {"solver": "dpm++2m", "steps": 20, "seeds": 2}  # nothing measured yet
    atomic.write_json(layout.sample_progress(100), {"decoded": 40, "total": 40, "elapsed_s": 4.0, "time": 0})
    atomic.write_json(layout.sample_progress(200), {"decoded": 10, "total": 40, "elapsed_s": 1.0, "time": 0})
    estimate = sampling_progress(layout, spec, rows)
    assert (estimate["decoded"], estimate["total"]) == (50, 120)
    assert estimate["sentences_per_s"] == pytest.approx(10.0)  # 50 candidates in 5 task-seconds
    assert estimate["eta_s"] == pytest.approx(7.0)  # 70 left, one task at a time
