"""Noising modes in training and sampling: what happens to the source positions."""

import pytest
import torch

from diffusion.config import DiffusionConfig
from diffusion.objective import DiffusionObjective
from diffusion.sampling import nearest_embedding, sample_tokens
from diffusion.schedule import Schedule
from tests.helpers import decoding

T = 50


def test_target_mode_training_keeps_the_source_clean(batch, denoiser):
    ids, mask = batch
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", T), DiffusionConfig(noising="target"))
    t = torch.full((4,), T - 1)
    _, z_0, z_t = objective.noised(ids, mask, t)
    src, trg = mask == 0, mask == 1
    assert torch.equal(z_t[src], z_0[src])
    assert not torch.allclose(z_t[trg], z_0[trg], atol=0.1)


def test_full_mode_training_noises_the_source(batch, denoiser):
    ids, mask = batch
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", T), DiffusionConfig(noising="full"))
    _, z_0, z_t = objective.noised(ids, mask, torch.full((4,), T - 1))
    assert not torch.allclose(z_t[mask == 0], z_0[mask == 0], atol=0.1)
    terms = objective(ids, mask, torch.tensor([0, 5, 20, T - 1]))
    assert set(terms) == {"loss", "mse", "nll", "tT", "mse_source", "mse_target"} and terms["loss"].shape == (4,)


def test_source_noise_gives_the_source_its_share_of_the_targets_noise_variance(batch, denoiser):
    ids, mask = batch
    schedule = Schedule.named("sqrt", T)
    t = torch.tensor([0, 5, 20, T - 1])
    src, trg = mask == 0, mask == 1

    def noised(share, noising="full"):
        torch.manual_seed(3)
        return DiffusionObjective(denoiser, schedule, DiffusionConfig(noising=noising, source_noise=share)).noised(ids, mask, t)

    _, z_0, full = noised(1.0)
    _, _, shared = noised(0.25)
    _, _, clean = noised(0.0)
    _, _, target = noised(1.0, "target")
    assert torch.equal(shared[trg], full[trg]) and torch.equal(clean[trg], full[trg])  # the target as before
    abar = schedule.alphas_cumprod[t].float()[:, None, None]
    noise = (full - abar.sqrt() * z_0) / (1 - abar).sqrt()  # the draw full noising made, recovered
    variance = 0.25 * (1 - abar)
    expected = (1 - variance).sqrt() * z_0 + variance.sqrt() * noise
    torch.testing.assert_close(shared[src], expected.expand_as(shared)[src], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clean[src], target[src])  # share 0: the clean source of target noising
    assert torch.equal(Schedule.q_sample_share(schedule, z_0, t, noise, 1.0), schedule.q_sample(z_0, t, noise))


def record_states(denoiser, batch, noising, full_mode, schedule=None, solver="ddpm", source_noise=1.0):
    """(the state the denoiser saw at every step, the clean embedding, the source mask, the tokens)."""
    ids, mask = batch
    states = {}
    tokens = sample_tokens(denoiser, schedule or Schedule.named("sqrt", T), ids, mask,
                           decoding(noising=noising, full_mode=full_mode, solver=solver, source_noise=source_noise),
                           generator=torch.Generator().manual_seed(1), on_step=lambda t, z: states.__setitem__(t, z.clone()))
    return states, denoiser.embed(ids), mask == 0, tokens


def source_residual(schedule, step, z, emb, src, share=1.0):
    """(z - sqrt(1 - v) emb) / sqrt(v), v = share (1 - abar), on the source: N(0, 1) iff z is emb
    forward-diffused with that variance."""
    v = share * (1 - schedule.alphas_cumprod[step].item())
    return (z[src] - (1 - v) ** 0.5 * emb[src]) / v**0.5


def test_target_mode_sampling_never_changes_the_source(batch, denoiser):
    states, emb, src, _ = record_states(denoiser, batch, "target", "conditional")
    assert sorted(states) == list(range(T))
    for z in states.values():
        assert torch.equal(z[src], emb[src])


def test_conditional_sampling_puts_the_forward_diffused_source_back_every_step(batch, denoiser):
    states, emb, src, _ = record_states(denoiser, batch, "full", "conditional")
    schedule = Schedule.named("sqrt", T)
    previous = None
    for step in range(T):
        r = source_residual(schedule, step, states[step], emb, src)
        assert abs(r.mean().item()) < 0.15 and 0.85 < r.std().item() < 1.15, step
        if previous is not None:  # fresh noise at every step
            assert abs(torch.corrcoef(torch.stack([r.flatten(), previous.flatten()]))[0, 1]) < 0.2
        previous = r


def test_conditional_sampling_with_source_noise_puts_the_source_back_at_its_share(batch, denoiser):
    states, emb, src, _ = record_states(denoiser, batch, "full", "conditional", source_noise=0.2)
    schedule = Schedule.named("sqrt", T)
    for step in range(T):
        r = source_residual(schedule, step, states[step], emb, src, share=0.2)
        # N(0, 1) only at this share: at the full level the same residual has std about sqrt(1 / 0.2)
        assert abs(r.mean().item()) < 0.15 and 0.85 < r.std().item() < 1.15, step


def test_joint_sampling_refuses_a_source_noise_share(batch, denoiser):
    with pytest.raises(ValueError, match="diffusion.source_noise: 0.5 needs sample.full_mode conditional"):
        record_states(denoiser, batch, "full", "joint", source_noise=0.5)


def test_joint_sampling_denoises_the_source_instead(batch, denoiser):
    states, emb, src, _ = record_states(denoiser, batch, "full", "joint")
    schedule = Schedule.named("sqrt", T)
    # near t = 0 an untrained model's source is far from the forward-diffused clean source
    assert source_residual(schedule, 1, states[1], emb, src).std() > 2  # conditional: 1 +- 0.15
    # and nothing anchors it: it starts from pure noise
    assert not torch.allclose(states[T - 1][src], emb[src], atol=0.5)


def test_nearest_embedding_matches_brute_force_in_chunks():
    torch.manual_seed(0)
    embedding, z = torch.randn(300, 16), torch.randn(5, 7, 16)
    expected = torch.cdist(z.reshape(-1, 16), embedding).argmin(-1).view(5, 7)
    assert torch.equal(nearest_embedding(z, embedding, chunk_elements=300 * 4), expected)
    assert torch.equal(nearest_embedding(embedding[None, [3, 99, 250]], embedding), torch.tensor([[3, 99, 250]]))


def test_gelu_epilogue_computes_the_same_feed_forward(batch, denoiser):
    # On the CPU the fused path runs the exact GELU, so any difference is a wiring fault (bias,
    # weight layout, shapes); on CUDA it is the tanh approximation, measured by diffusion.bench.
    ids, _ = batch
    z = denoiser.embed(ids) + torch.randn(ids.shape[0], ids.shape[1], denoiser.cfg.embed_dim)
    t = torch.full((ids.shape[0],), 500.0)
    with torch.no_grad():
        exact = denoiser(z, t)
        denoiser.use_gelu_epilogue()
        fused = denoiser(z, t)
        denoiser.use_gelu_epilogue(False)
    torch.testing.assert_close(fused, exact, rtol=1e-5, atol=1e-5)
