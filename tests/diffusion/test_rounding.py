"""Rounding a step's z_0 and reading the tokens out: L2, the decoder's argmax, its expected embedding;
the PAD penalty and the text-only first target positions; self-conditioning's feedback in the loop."""

import math

import pytest
import torch

from diffusion.config import ConfigError
from diffusion.data import PAD
from diffusion.sampling import nearest_embedding, sample_tokens, soft_embedding
from diffusion.schedule import Schedule
from tests.helpers import Recorder, decoding, small_batch, tiny_denoiser


def test_self_conditioned_sampling_feeds_back_the_previous_estimate_and_zeros_first():
    denoiser = tiny_denoiser(self_condition=True)
    recorder = Recorder(denoiser)
    ids, mask = small_batch()
    sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, decoding(), generator=torch.Generator().manual_seed(0))
    assert len(recorder.calls) == 10
    assert torch.equal(recorder.calls[0][0], torch.zeros_like(recorder.calls[0][0]))
    for (_, before), (previous, _) in zip(recorder.calls, recorder.calls[1:]):
        assert torch.equal(previous, before.float())  # the raw estimate, not the rounded one


def test_logits_rounding_is_the_argmax_of_the_decoder():
    torch.manual_seed(0)
    embedding, bias, z = torch.randn(300, 16), torch.randn(300) * 5, torch.randn(5, 7, 16) * 0.2
    expected = (z @ embedding.t() + bias).argmax(-1)
    assert torch.equal(nearest_embedding(z, embedding, chunk_elements=300 * 4, bias=bias), expected)
    # a blurry (short) estimate is nearest in L2 to the shortest embedding, whatever it points at
    embedding[42] *= 0.1
    assert (nearest_embedding(z * 0.01, embedding) == 42).all()


def test_pad_penalty_lowers_pads_score_by_its_amount_and_nothing_else():
    torch.manual_seed(0)
    embedding, bias, z = torch.randn(300, 16), torch.randn(300), torch.randn(40, 16) * 0.3
    bias[PAD] = 4.0  # PAD leads at some positions, by various margins
    logits = z @ embedding.t() + bias
    others = logits.clone()
    others[:, PAD] = -math.inf
    margin = logits[:, PAD] - others.max(-1).values  # how far PAD leads (or trails) at each position
    for penalty in (0.0, float(margin.median()), float(margin.max()) + 0.01):
        chosen = nearest_embedding(z, embedding, chunk_elements=300 * 4, bias=bias, pad_penalty=penalty)
        assert torch.equal(chosen, torch.where(margin > penalty, PAD, others.argmax(-1)))
    assert 0 < int((margin > 0).sum()) < len(margin)  # the cases above differ
    # in L2 the penalty is a distance: |z - e_PAD|^2 counts 2 * penalty more
    l2 = nearest_embedding(z, embedding, pad_penalty=3.0)
    scores = 2 * z @ embedding.t() - embedding.pow(2).sum(-1)
    scores[:, PAD] -= 6.0
    assert torch.equal(l2, scores.argmax(-1))


def test_pad_penalty_zero_samples_the_same_tokens_and_a_large_one_emits_no_pad():
    denoiser = tiny_denoiser()
    with torch.no_grad():
        denoiser.lm_head.bias[PAD] += 50.0  # a decoder that calls every position PAD
    ids, mask = small_batch()

    def sample(**options):
        return sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, decoding(rounding="logits", **options),
                             generator=torch.Generator().manual_seed(0))

    plain = sample()
    assert (plain[mask == 1] == PAD).all()
    assert torch.equal(sample(pad_penalty=0.0), plain)
    assert not (sample(pad_penalty=1000.0)[mask == 1] == PAD).any()


def test_text_only_rounding_never_picks_a_special_token_and_is_the_argmax_of_the_others():
    torch.manual_seed(0)
    embedding, bias, z = torch.randn(300, 16), torch.randn(300), torch.randn(40, 16) * 0.3
    bias[:4] += 6.0  # PAD, UNK, CLS and SEP lead everywhere
    logits = z @ embedding.t() + bias
    assert (nearest_embedding(z, embedding, bias=bias) < 4).all()
    assert torch.equal(nearest_embedding(z, embedding, chunk_elements=300 * 4, bias=bias, text_only=True),
                       logits[:, 4:].argmax(-1) + 4)
    embedding[:4] *= 0.01  # in L2 too: the specials are nearest to a short z, and barred
    assert (nearest_embedding(z * 0.01, embedding) < 4).all()
    assert torch.equal(nearest_embedding(z * 0.01, embedding, text_only=True),
                       (2 * z * 0.01 @ embedding.t() - embedding.pow(2).sum(-1))[:, 4:].argmax(-1) + 4)


@pytest.mark.parametrize("rounding", ["logits", "l2"])
def test_min_target_tokens_gives_text_after_the_targets_cls_and_zero_changes_nothing(rounding):
    from diffusion.data import CLS, SEP

    denoiser = tiny_denoiser()
    with torch.no_grad():
        denoiser.lm_head.bias[SEP] += 50.0  # a decoder that ends every target at once
        denoiser.word_embedding.weight[SEP] *= 0.01  # and the embedding nearest to any blur
    ids, mask = small_batch()
    mask[3:, 10:14] = 0  # sources of two lengths: the target's [CLS] at position 10 or 14
    ids[:3, 10], ids[3:, 14] = CLS, CLS

    rounded = []  # the token ids of every rounding: the denoiser embeds them for the next step
    embed = denoiser.embed
    denoiser.embed = lambda token_ids: (rounded.append(token_ids), embed(token_ids))[1]

    def sample(**options):
        rounded.clear()
        tokens = sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, decoding(rounding=rounding, **options),
                               generator=torch.Generator().manual_seed(0))
        assert len(rounded) == 1 + 10  # the clean embedding, then one rounding a step
        return tokens, rounded[1:]

    plain, plain_rounded = sample()
    assert (plain[mask == 1] < 4).all()  # every output empty
    assert all((r[mask == 1] < 4).all() for r in plain_rounded)  # and so was every rounding
    assert torch.equal(sample(min_target_tokens=0)[0], plain)
    tokens, roundings = sample(min_target_tokens=2)
    for row, start in zip(tokens, [10] * 3 + [14] * 3):
        assert (row[start + 1 : start + 3] >= 4).all()  # text at the two positions after [CLS]
        assert (row[start + 3 :] < 4).all()  # the model's choice everywhere else
    for step_ids in roundings:  # at every step's rounding too, not only in the read-out
        starts = torch.tensor([10] * 3 + [14] * 3)[:, None] + torch.tensor([1, 2])
        assert (step_ids.gather(1, starts) >= 4).all()
    assert torch.equal(tokens[mask == 0], plain[mask == 0])
    with pytest.raises(ConfigError, match="sample.min_target_tokens: needs a rounding that picks tokens"):
        decoding(rounding="soft", min_target_tokens=1)


def test_soft_rounding_is_the_decoders_expected_embedding():
    torch.manual_seed(0)
    embedding, bias, z = torch.randn(300, 16), torch.randn(300), torch.randn(5, 7, 16) * 0.5
    logits = z @ embedding.t() + bias
    expected = torch.softmax(logits / 0.7, -1) @ embedding
    assert torch.allclose(soft_embedding(z, embedding, bias, 0.7, chunk_elements=300 * 4), expected, atol=1e-5)
    # cold, it is the embedding of the decoder's argmax; PAD's penalty lowers its logit
    assert torch.allclose(soft_embedding(z, embedding, bias, 1e-4), embedding[logits.argmax(-1)], atol=1e-4)
    penalised = logits.clone()
    penalised[..., PAD] -= 2.0
    assert torch.allclose(soft_embedding(z, embedding, bias, 1.0, pad_penalty=2.0),
                          torch.softmax(penalised, -1) @ embedding, atol=1e-5)


def test_cold_soft_rounding_samples_the_tokens_of_logits_rounding_and_warm_differs():
    denoiser = tiny_denoiser()
    ids, mask = small_batch()

    def sample(**options):
        return sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, decoding(solver="dpm++2m", **options),
                             generator=torch.Generator().manual_seed(0))

    hard = sample(rounding="logits")
    assert torch.equal(sample(rounding="soft", soft_temperature=1e-4), hard)
    assert not torch.equal(sample(rounding="soft", soft_temperature=3.0), hard)


def test_sampler_refuses_an_unknown_rounding():
    with pytest.raises(ConfigError, match="sample.rounding: must be one of 'l2', 'logits', 'soft'"):
        decoding(rounding="cosine")
