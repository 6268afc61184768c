"""Target lengths fixed before sampling (sample.target_length: predicted): the training targets'
length table, the layout it holds, the sampler keeping it, and its config rules."""

import json

import pytest
import torch

from diffusion.config import ConfigError
from diffusion.data import CLS, PAD, SEP, build_pairs
from diffusion.lengths import held_layout, length_table, load_table, predicted_lengths, save_table
from diffusion.manifest import TARGET_LENGTHS, CheckpointError
from diffusion.sampling import sample_tokens
from diffusion.schedule import Schedule
from tests.helpers import decoding, small_batch, tiny_denoiser

NOT_TEXT = 4  # PAD, UNK, CLS, SEP


def test_the_table_is_the_median_target_length_by_source_length_with_gaps_taken_from_the_nearest():
    # sources of 1, 1, 1, 4 and 6 tokens; targets of 2, 5, 3, 7 and 1
    srcs = [[9], [9], [9], [9] * 4, [9] * 6]
    trgs = [[8] * 2, [8] * 5, [8] * 3, [8] * 7, [8]]
    ids, mask = build_pairs(srcs, trgs, seq_len=24)
    # unseen: 0 and 2 take 1's entry, 3 takes 4's, 5 is as near 4 as 6 and takes the shorter's
    assert length_table(ids, mask) == [3, 3, 3, 7, 7, 7, 1]


def test_predicted_lengths_offset_and_stay_between_one_and_the_room():
    table = [3, 3, 5, 8]
    sources = torch.tensor([0, 2, 3, 9])  # 9: past the table, its last entry
    room = torch.tensor([10, 10, 6, 10])
    assert predicted_lengths(table, sources, 0, room).tolist() == [3, 5, 6, 8]
    assert predicted_lengths(table, sources, 2, room).tolist() == [5, 7, 6, 10]
    assert predicted_lengths(table, sources, -5, room).tolist() == [1, 1, 3, 3]


def test_held_layout_marks_the_text_and_holds_cls_sep_and_pads():
    mask = torch.tensor([[0] * 4 + [1] * 8, [0] * 6 + [1] * 6])
    text, held = held_layout(mask, torch.tensor([3, 1]))
    assert text[0].tolist() == [False] * 5 + [True] * 3 + [False] * 4
    assert held[0].tolist() == [-1] * 4 + [CLS, -1, -1, -1, SEP, PAD, PAD, PAD]
    assert held[1].tolist() == [-1] * 6 + [CLS, -1, SEP, PAD, PAD, PAD]


def test_the_sampler_gives_each_target_its_length_of_text_even_from_a_decoder_that_says_pad():
    denoiser = tiny_denoiser()
    with torch.no_grad():
        denoiser.lm_head.bias[:NOT_TEXT] += 50.0  # every special token beats every word everywhere
    ids, mask = small_batch()  # source 0-9, target 10-23
    lengths = torch.tensor([1, 2, 5, 8, 12, 12])
    cfg = decoding(rounding="logits", solver="dpm++2m", target_length="predicted")
    tokens = sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, cfg,
                           generator=torch.Generator().manual_seed(0), target_lengths=lengths)
    learned = sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, decoding(rounding="logits", solver="dpm++2m"),
                            generator=torch.Generator().manual_seed(0))
    assert (learned[:, 11:] < NOT_TEXT).all()  # the model's own lengths: nothing
    for row, n in zip(tokens, lengths.tolist()):
        target = row[10:].tolist()
        assert target[0] == CLS and all(t >= NOT_TEXT for t in target[1 : 1 + n]), target
        assert target[1 + n] == SEP and target[2 + n :] == [PAD] * (12 - n)


def test_every_rounding_step_holds_the_layout(monkeypatch):
    """Not only the read-out: the estimate each step moves towards has the held tokens' embeddings."""
    from diffusion import rounding

    denoiser = tiny_denoiser()
    ids, mask = small_batch()
    lengths = torch.tensor([3, 3, 3, 3, 3, 3])
    seen = []
    tokens = rounding.Rounding.tokens
    monkeypatch.setattr(rounding.Rounding, "tokens", lambda self, z: seen.append(tokens(self, z)) or seen[-1])
    sample_tokens(denoiser, Schedule.named("sqrt", 6), ids, mask, decoding(rounding="l2", target_length="predicted"),
                  generator=torch.Generator().manual_seed(0), target_lengths=lengths)
    assert len(seen) == 6
    for step_tokens in seen:
        assert (step_tokens[:, 10] == CLS).all() and (step_tokens[:, 14] == SEP).all()
        assert (step_tokens[:, 15:] == PAD).all() and (step_tokens[:, 11:14] >= NOT_TEXT).all()


def test_the_table_travels_in_a_checkpoint_and_an_old_checkpoint_is_named(tmp_path):
    save_table([2, 3, 5], tmp_path)
    assert load_table(tmp_path) == [2, 3, 5]
    with pytest.raises(CheckpointError, match=f"{TARGET_LENGTHS}: missing.*target_length: learned"):
        load_table(tmp_path / "elsewhere")
    (tmp_path / TARGET_LENGTHS).write_text(json.dumps({"by_source_length": ["x"]}))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_table(tmp_path)


@pytest.mark.parametrize("keys, key", [
    ({"length_offsets": [0, 1]}, "sample.length_offsets"),  # read with predicted lengths only
    ({"target_length": "predicted", "length_offsets": []}, "sample.length_offsets"),
    ({"target_length": "predicted", "rounding": "soft"}, "sample.target_length"),  # soft picks no token to hold
])
def test_length_keys_that_would_do_nothing_are_refused(keys, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        decoding(**keys)


def ended_batch():
    """small_batch's six sequences with real target ends: [CLS], 1-6 tokens, [SEP], PAD to 24."""
    ids, mask = small_batch()
    for row, n in enumerate(range(1, 7)):
        ids[row, 10] = CLS
        ids[row, 11 + n] = SEP
        ids[row, 12 + n:] = PAD
    return ids, mask


def test_a_clean_target_end_keeps_sep_and_pads_as_clean_as_the_source_in_training():
    from diffusion.config import DiffusionConfig
    from diffusion.lengths import target_end
    from diffusion.objective import DiffusionObjective

    ids, mask = ended_batch()
    end = target_end(ids, mask)
    assert end.sum(-1).tolist() == [12, 11, 10, 9, 8, 7]  # [SEP] and the PADs after it
    t = torch.full((6,), 40)
    noised = {}
    for clean in (False, True):
        torch.manual_seed(3)
        objective = DiffusionObjective(tiny_denoiser(), Schedule.named("sqrt", 50), DiffusionConfig(clean_target_end=clean))
        noised[clean] = objective.noised(ids, mask, t)
    (_, z_0, plain), (_, same_z_0, held) = noised[False], noised[True]
    assert torch.equal(z_0, same_z_0)
    assert torch.equal(held[end], z_0[end]) and not torch.allclose(plain[end], z_0[end])
    assert torch.equal(held[~end], plain[~end])  # the source and the target's text as before


def test_a_model_told_its_lengths_sees_the_target_end_clean_at_every_step():
    denoiser = tiny_denoiser()
    ids, mask = small_batch()
    lengths = torch.tensor([1, 2, 3, 4, 5, 6])
    cfg = decoding(rounding="logits", solver="dpm++2m", target_length="predicted", clean_target_end=True)
    seen = []
    tokens = sample_tokens(denoiser, Schedule.named("sqrt", 6), ids, mask, cfg, generator=torch.Generator().manual_seed(0),
                           on_step=lambda step, z: seen.append(z.clone()), target_lengths=lengths)
    text, held = held_layout(mask, lengths)
    end = (held == SEP) | (held == PAD)
    clean = denoiser.embed(held.clamp(min=0)).float()
    assert len(seen) == 6
    for z in seen:
        assert torch.equal(z[end], clean[end])
        assert not torch.allclose(z[text], clean[text])  # the text positions are the sampler's
    assert torch.equal(tokens[end], held[end])


def test_a_model_told_its_lengths_samples_with_lengths_fixed_beforehand():
    with pytest.raises(ConfigError, match=r"diffusion\.clean_target_end.*sample\.target_length: predicted"):
        decoding(clean_target_end=True)
    with pytest.raises(ValueError, match="fixed beforehand"):
        sample_tokens(tiny_denoiser(), Schedule.named("sqrt", 4), *small_batch(),
                      decoding(clean_target_end=True, target_length="predicted"))
