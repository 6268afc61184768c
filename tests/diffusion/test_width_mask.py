"""model.width_mask: a sequence attends to, is scored at and decodes from its own width alone.

Issue 13 asks that trimmed and untrimmed decoding give the same tokens when the target fits its
budget. DiffuSeq's denoiser attends to every position, so the PAD tail of an untrimmed batch
changes every estimate; with the width mask it cannot.
"""

import pytest
import torch

from diffusion.config import DataConfig, DiffusionConfig, ModelConfig
from diffusion.data import PAD, batch_width, build_sequence, sequence_widths, target_budget, within_width
from diffusion.model import Denoiser
from diffusion.objective import DiffusionObjective
from diffusion.sampling import sample_tokens
from diffusion.schedule import Schedule
from tests.helpers import decoding

SEQ_LEN = 40
TRIM = DataConfig(trim=True, target_ratio=1.5, target_margin=4, seq_len=SEQ_LEN)


def tiny_denoiser(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=60, embed_dim=16, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64,
                      max_positions=SEQ_LEN, dropout=0.0, **kw)
    return Denoiser(cfg).eval()


def trimmed_batch():
    """Six pairs of different source lengths, each target within its budget; full seq_len rows."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for n in (3, 4, 4, 5, 6, 7):
        source = torch.randint(4, 60, (n,), generator=generator).tolist()
        target = torch.randint(4, 60, (n + 1,), generator=generator).tolist()
        rows.append(build_sequence(source, target, SEQ_LEN, target_budget(TRIM)))
    ids = torch.tensor([r[0] for r in rows])
    mask = torch.tensor([r[1] for r in rows])
    return ids, mask


def test_within_width_marks_each_sequences_source_and_target_budget():
    ids, mask = trimmed_batch()
    widths = sequence_widths(mask, TRIM)
    budget = target_budget(TRIM)
    assert widths.tolist() == [(n + 3) + budget(n) for n in (3, 4, 4, 5, 6, 7)]
    inside = within_width(mask[:, :24], TRIM)  # a batch cut narrower than seq_len: widths are the same
    assert inside.shape == (6, 24)
    assert inside.sum(-1).tolist() == widths.clamp(max=24).tolist()
    assert within_width(mask, DataConfig(seq_len=SEQ_LEN)).all()  # untrimmed: every position


@pytest.mark.parametrize("noising, solver", [("target", "ddpm"), ("target", "dpm++2m"), ("full", "ddpm")])
def test_trimmed_and_untrimmed_decoding_give_the_same_tokens_when_masked(noising, solver):
    denoiser = tiny_denoiser(width_mask=True, self_condition=True)
    ids, mask = trimmed_batch()
    width = batch_width(sequence_widths(mask, TRIM), SEQ_LEN)
    assert width < SEQ_LEN  # the trimmed batch is narrower

    def decode(columns: int, masked: bool = True):
        cut_ids, cut_mask = ids[:, :columns], mask[:, :columns]
        return sample_tokens(denoiser, Schedule.named("sqrt", 12), cut_ids, cut_mask,
                             decoding(noising=noising, solver=solver, rounding="logits"),
                             generator=torch.Generator().manual_seed(5),
                             within_width=within_width(cut_mask, TRIM) if masked else None)

    trimmed, untrimmed = decode(width), decode(SEQ_LEN)
    assert torch.equal(untrimmed[:, :width], trimmed)
    assert (untrimmed[:, width:] == PAD).all()
    inside = within_width(mask, TRIM)
    assert (untrimmed[~inside] == PAD).all() and (untrimmed[inside & (mask == 1)] != PAD).any()
    # without the mask the PAD tail of the untrimmed batch changes what the sequences decode to
    assert not torch.equal(decode(SEQ_LEN, masked=False)[:, :width], decode(width, masked=False))


def test_masked_training_terms_ignore_whatever_lies_past_each_width():
    ids, mask = trimmed_batch()
    inside = within_width(mask, TRIM)
    scrambled = torch.where(inside, ids, torch.randint(4, 60, ids.shape, generator=torch.Generator().manual_seed(9)))
    t = torch.tensor([0, 3, 10, 20, 30, 45])

    def terms(objective, batch_ids):
        torch.manual_seed(11)
        return objective(batch_ids, mask, t)

    for noising in ("target", "full"):
        masked = DiffusionObjective(tiny_denoiser(width_mask=True, self_condition=True), Schedule.named("sqrt", 50),
                                    DiffusionConfig(noising=noising, anchor_loss=1.0),
                                    within_width=lambda m: within_width(m, TRIM))
        a, b = terms(masked, ids), terms(masked, scrambled)
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name
        plain = DiffusionObjective(tiny_denoiser(), Schedule.named("sqrt", 50), DiffusionConfig(noising=noising, anchor_loss=1.0))
        assert not torch.allclose(terms(plain, ids)["loss"], terms(plain, scrambled)["loss"])
