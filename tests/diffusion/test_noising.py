"""Noising modes in training and sampling: what happens to the source positions."""

import torch

from diffusion.objective import DiffusionObjective
from diffusion.sampling import nearest_embedding, sample_tokens
from diffusion.schedule import Schedule

T = 50


def test_target_mode_training_keeps_the_source_clean(batch, denoiser):
    ids, mask = batch
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", T), "target")
    t = torch.full((4,), T - 1)
    _, z_0, z_t = objective.noised(ids, mask, t)
    src, trg = mask == 0, mask == 1
    assert torch.equal(z_t[src], z_0[src])
    assert not torch.allclose(z_t[trg], z_0[trg], atol=0.1)


def test_full_mode_training_noises_the_source(batch, denoiser):
    ids, mask = batch
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", T), "full")
    _, z_0, z_t = objective.noised(ids, mask, torch.full((4,), T - 1))
    assert not torch.allclose(z_t[mask == 0], z_0[mask == 0], atol=0.1)
    terms = objective(ids, mask, torch.tensor([0, 5, 20, T - 1]))
    assert set(terms) == {"loss", "mse", "nll", "tT", "mse_source", "mse_target"} and terms["loss"].shape == (4,)


def record_states(denoiser, batch, noising, full_mode, schedule=None, solver="ddpm"):
    """(the state the denoiser saw at every step, the clean embedding, the source mask, the tokens)."""
    ids, mask = batch
    states = {}
    tokens = sample_tokens(denoiser, schedule or Schedule.named("sqrt", T), ids, mask, noising, full_mode, solver=solver,
                           generator=torch.Generator().manual_seed(1),
                           on_step=lambda t, z: states.__setitem__(t, z.clone()))
    return states, denoiser.embed(ids), mask == 0, tokens


def source_residual(schedule, step, z, emb, src):
    """(z - sqrt(abar) emb) / sqrt(1 - abar) on the source: N(0, 1) iff z is emb forward-diffused to step."""
    a = schedule.alphas_cumprod[step].item()
    return (z[src] - a**0.5 * emb[src]) / (1 - a) ** 0.5


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
