"""The noise schedule and the forward process against their closed forms."""

import math

import pytest
import torch

from diffusion.schedule import Schedule, named_betas

T = 2000


def sqrt_alpha_bar(s: float) -> float:
    return 1 - math.sqrt(s + 1e-4)


def test_sqrt_schedule_matches_closed_form_at_both_ends():
    s = Schedule.named("sqrt", T)
    # the product of (1 - beta) telescopes to f((t+1)/T) / f(0)
    assert s.alphas_cumprod[0].item() == pytest.approx(sqrt_alpha_bar(1 / T) / sqrt_alpha_bar(0), rel=1e-12)
    # f(1) < 0, so the last beta is capped at 0.999
    assert s.betas[-1].item() == pytest.approx(0.999)
    expected_last = sqrt_alpha_bar((T - 1) / T) / sqrt_alpha_bar(0) * 0.001
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected_last, rel=1e-9)
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()


def test_q_sample_matches_closed_form_at_both_ends():
    s = Schedule.named("sqrt", T)
    torch.manual_seed(0)
    z_0, noise = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for step in (0, T - 1):
        t = torch.full((2,), step)
        a = s.alphas_cumprod[step].item()
        expected = math.sqrt(a) * z_0 + math.sqrt(1 - a) * noise
        torch.testing.assert_close(s.q_sample(z_0, t, noise), expected, rtol=1e-6, atol=1e-6)
    # at t = 0 the sample is close to the clean point (noise std ~0.12), at T - 1 almost pure noise
    assert s.sqrt_one_minus_alphas_cumprod[0] < 0.13
    assert s.alphas_cumprod[-1] < 1e-4


def test_posterior_at_step_zero_returns_the_prediction():
    s = Schedule.named("sqrt", T)
    z_0, z_t = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    torch.testing.assert_close(s.posterior_mean(z_0, z_t, torch.zeros(3, dtype=torch.long)), z_0)


def test_respaced_schedule_keeps_alpha_bars_and_original_timesteps():
    s = Schedule.named("sqrt", T)
    r = s.respaced(100)
    assert r.num_steps == 100
    kept = r.timestep_map
    assert kept[0] == 0 and kept[-1] == T - 1
    torch.testing.assert_close(r.alphas_cumprod, s.alphas_cumprod[kept])
    # the model is told the original timestep, rescaled to [0, 1000)
    assert r.model_timesteps(torch.tensor([99])).item() == pytest.approx((T - 1) * 1000 / T)


@pytest.mark.parametrize("name", ["sqrt", "linear", "cosine"])
def test_named_schedules_are_valid(name):
    betas = named_betas(name, 500)
    assert betas.shape == (500,) and (betas > 0).all() and (betas < 1).all()


def test_unknown_schedule_is_named_in_the_error():
    with pytest.raises(ValueError, match="quadratic"):
        named_betas("quadratic", 10)
