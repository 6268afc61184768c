"""The training objective's terms: self-conditioning in training, the anchor loss, the mse by position,
DiffuSeq-v2's absorbing noise."""


import torch

from diffusion.config import DiffusionConfig
from diffusion.data import PAD, SEP
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


def z_t_seen(objective, ids, mask, t):
    """The z_t the denoiser is handed in one training forward, and the loss terms."""
    recorder = Recorder(objective.denoiser)
    terms = objective(ids, mask, t)
    return recorder.z_t[0], terms


def test_absorb_rate_puts_one_learned_vector_at_target_positions_the_more_often_the_noisier_t():
    ids, mask = small_batch()
    ids, mask = ids.repeat(50, 1), mask.repeat(50, 1)  # 300 sequences
    schedule = Schedule.named("sqrt", 50)
    objective = DiffusionObjective(tiny_denoiser(), schedule, DiffusionConfig(absorb_rate=0.5))
    t = torch.cat([torch.full((150,), 2), torch.full((150,), 49)])
    torch.manual_seed(3)
    z_t, terms = z_t_seen(objective, ids, mask, t)
    absorbed = (z_t == objective.absorbing.detach()).all(-1)  # (B, L)
    assert not absorbed[mask == 0].any()  # the source stays the condition
    target = mask == 1
    for rows, step in ((slice(0, 150), 2), (slice(150, 300), 49)):
        chance = 0.5 * float(schedule.gather("sqrt_one_minus_alphas_cumprod", torch.tensor([step]), 1))
        share = float(absorbed[rows][target[rows]].float().mean())  # 2,100 positions
        assert abs(share - chance) < 0.04, (step, share, chance)
    assert float(absorbed[150:][target[150:]].float().mean()) > 0.3
    terms["loss"].sum().backward()  # the vector is learnt
    assert objective.absorbing.grad is not None and float(objective.absorbing.grad.abs().sum()) > 0


def test_absorbing_leaves_a_told_targets_end_clean():
    ids, mask = small_batch()
    ids[:, 18], ids[:, 19:] = SEP, PAD  # each target: [CLS]-like start, text, then [SEP] and PADs
    objective = DiffusionObjective(tiny_denoiser(), Schedule.named("sqrt", 50),
                                   DiffusionConfig(absorb_rate=1.0, clean_target_end=True))
    torch.manual_seed(4)
    z_t, _ = z_t_seen(objective, ids, mask, torch.full((6,), 49))
    absorbed = (z_t == objective.absorbing.detach()).all(-1)
    assert not absorbed[:, 18:].any() and absorbed[:, 10:18].float().mean() > 0.8


def test_without_absorb_rate_the_denoiser_sees_noised_z_t_and_the_objective_has_no_new_weight():
    ids, mask = small_batch()
    t = torch.tensor([0, 3, 10, 20, 30, 49])
    objective = DiffusionObjective(tiny_denoiser(), Schedule.named("sqrt", 50), DiffusionConfig())
    assert not any("absorbing" in name for name in objective.state_dict())
    torch.manual_seed(6)
    z_t, _ = z_t_seen(objective, ids, mask, t)
    torch.manual_seed(6)
    torch.testing.assert_close(z_t, objective.noised(ids, mask, t)[2])
