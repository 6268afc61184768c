"""The training objective's terms: self-conditioning in training, the anchor loss, the mse by position."""


import torch

from diffusion.config import DiffusionConfig
from diffusion.objective import DiffusionObjective
from diffusion.schedule import Schedule
from tests.helpers import Recorder, small_batch, tiny_denoiser


def test_self_conditioned_training_gives_half_the_examples_the_first_estimate_and_zeros_to_the_rest():
    denoiser = tiny_denoiser(self_condition=True)
    recorder = Recorder(denoiser)
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), DiffusionConfig())
    ids, mask = small_batch()
    ids, mask = ids.repeat(20, 1), mask.repeat(20, 1)  # 120 examples
    torch.manual_seed(5)
    objective(ids, mask, torch.randint(0, 50, (120,)))
    (first_input, first_estimate), (second_input, _) = recorder.calls
    assert first_input is None  # the first pass has no estimate to see (zeros inside the model)
    kept = (second_input == first_estimate).flatten(1).all(1)
    dropped = (second_input == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 30 < int(kept.sum()) < 90


def test_anchor_loss_adds_the_cross_entropy_of_the_estimate_on_the_noised_positions():
    denoiser = tiny_denoiser()
    ids, mask = small_batch()
    t = torch.tensor([0, 3, 10, 20, 30, 49])
    terms = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(7)
        terms[weight] = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), DiffusionConfig(anchor_loss=weight))(ids, mask, t)
    assert "anchor" not in terms[0.0]
    torch.testing.assert_close(terms[2.0]["loss"], terms[0.0]["loss"] + 2.0 * terms[2.0]["anchor"])
    # by hand: cross-entropy of lm_head(f(z_t)) at the target positions only
    torch.manual_seed(7)
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), DiffusionConfig())
    _, _, z_t = objective.noised(ids, mask, t)
    logits = denoiser.logits(denoiser(z_t, objective.schedule.model_timesteps(t)))
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    torch.testing.assert_close(terms[2.0]["anchor"], (ce * mask).sum(1) / mask.sum(1))


def test_loss_terms_split_the_mse_into_source_and_target_positions():
    denoiser = tiny_denoiser()
    ids, mask = small_batch()
    torch.manual_seed(2)
    terms = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), DiffusionConfig())(ids, mask, torch.full((6,), 30))
    # with equal source and target counts weighting, their mean is the mse over every position
    n_source, n_target = 10, 14
    torch.testing.assert_close((terms["mse_source"] * n_source + terms["mse_target"] * n_target) / 24, terms["mse"])
