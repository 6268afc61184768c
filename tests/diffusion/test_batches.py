"""Trimmed sequences and length-bucketed batches: each sequence keeps its source, its target is cut
to its budget, and a batch is cut to the width of its widest sequence."""


import torch

from diffusion.batches import POOL, BatchStream
from diffusion.config import DataConfig
from diffusion.data import PAD, batch_width, build_sequence, sequence_widths, target_budget, width_batches


TRIM = DataConfig(trim=True, target_ratio=1.5, target_margin=8)


def test_trimmed_sequence_keeps_the_source_and_cuts_the_target_to_its_budget():
    budget = target_budget(TRIM)
    assert budget(4) == 14 and budget(5) == 16  # ceil(1.5 n) + 8
    ids, mask = build_sequence([10, 11, 12, 13], list(range(20, 40)), 64, budget)
    source, target = [i for i, m in zip(ids, mask) if m == 0], [i for i, m in zip(ids, mask) if m == 1]
    assert source == [2, 10, 11, 12, 13, 3, 3]  # [CLS] x [SEP] [SEP], untouched
    assert target[:14] == [2, *range(20, 32), 3] and set(target[14:]) == {PAD}  # 14 positions, [SEP] kept
    width = sequence_widths(torch.tensor([mask]), TRIM)
    assert width.tolist() == [7 + 14]  # the target fits its width exactly
    # a target within its budget is untouched; untrimmed, every width is seq_len
    assert build_sequence([10, 11], [20, 21], 32, budget) == build_sequence([10, 11], [20, 21], 32)
    assert sequence_widths(torch.tensor([mask]), DataConfig(seq_len=64)).tolist() == [64]


def test_batch_width_rounds_up_to_eight_within_seq_len():
    assert batch_width(torch.tensor([17, 9]), 128) == 24
    assert batch_width(torch.tensor([24]), 128) == 24
    assert batch_width(torch.tensor([125]), 128) == 128
    assert batch_width(torch.tensor([30]), 28) == 28


def test_bucketing_yields_every_pair_once_per_epoch_in_batches_of_similar_width():
    n, micro = 4 * POOL * 8, 8
    torch.manual_seed(0)
    widths = torch.randint(10, 120, (n,))
    ids = torch.arange(n)[:, None].repeat(1, 128)  # row i holds i: a batch names its pairs
    stream = BatchStream(ids, torch.ones_like(ids), micro, 0, 1, seed=3, device="cpu", widths=widths)
    seen, spreads = [], []
    for _ in range(n // micro):
        batch, _ = stream.next()
        rows = batch[:, 0]
        seen += rows.tolist()
        assert batch.shape[1] == batch_width(widths[rows], 128)  # cut to its widest sequence
        spreads.append(int(widths[rows].max() - widths[rows].min()))
    assert sorted(seen) == list(range(n))  # every pair once in the epoch
    assert sum(spreads) / len(spreads) < 5  # sorted pools: near-uniform widths (random: about 100)
    # the next epoch is another order, and a resumed stream continues it exactly
    state = stream.state_dict()
    resumed = BatchStream(ids, torch.ones_like(ids), micro, 0, 1, seed=3, device="cpu", widths=widths)
    resumed.load_state_dict(state)
    assert torch.equal(stream.next()[0], resumed.next()[0])


def test_width_batches_group_one_width_and_cover_every_pair():
    widths = torch.tensor([20, 100, 21, 24, 30, 101, 23])
    batches = width_batches(widths, 128, batch_size=2)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(7))
    for b in batches:
        assert len(b) <= 2 and len({batch_width(widths[[i]], 128) for i in b.tolist()}) == 1
    untrimmed = width_batches(torch.full((5,), 128), 128, batch_size=2)
    assert [b.tolist() for b in untrimmed] == [[0, 1], [2, 3], [4]]  # index order, as before
