"""The budget recipe's keys (issue 12): each changes what it claims and nothing else.

Trimmed, length-bucketed sequences; self-conditioning; the anchor loss; learning-rate and EMA
warm-up; rounding by the logits; the per-term logs and the checkpoint diagnostics.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from diffusion.batches import POOL, BatchStream
from diffusion.config import DataConfig, ModelConfig
from diffusion.corpus import write_corpus
from diffusion.data import (PAD, batch_width, build_sequence, encode_pairs, sequence_widths, target_budget,
                            train_tokenizer, width_batches)
from diffusion.ema import EMA
from diffusion.metrics import score
from diffusion.model import Denoiser
from diffusion.objective import DiffusionObjective
from diffusion.sampling import nearest_embedding, sample_tokens, soft_embedding
from diffusion.schedule import Schedule
from tests.conftest import QQP_TRAIN, QQP_VALID, REPO, qqp_slice
from tests.helpers import read_log, run_module, tiny_config, write_config

TRIM = DataConfig(trim=True, target_ratio=1.5, target_margin=8)


# --- trimmed sequences and bucketing ---------------------------------------------------------

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


# --- self-conditioning, anchor loss, rounding --------------------------------------------------

def tiny_denoiser(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=60, embed_dim=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64,
                      max_positions=24, dropout=0.0, **kw)
    return Denoiser(cfg).eval()


class Recorder:
    """Wraps a denoiser and records the `previous_z_0` of every call and what the call returned."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []
        self.original = denoiser.forward

        def forward(z_t, t, previous_z_0=None, **kw):
            out = self.original(z_t, t, previous_z_0, **kw)
            self.calls.append((None if previous_z_0 is None else previous_z_0.clone(), out.detach().clone()))
            return out
        denoiser.forward = forward


def batch():
    torch.manual_seed(1)
    ids = torch.randint(4, 60, (6, 24))
    mask = torch.zeros(6, 24, dtype=torch.long)
    mask[:, 10:] = 1
    return ids, mask


def test_self_conditioned_sampling_feeds_back_the_previous_estimate_and_zeros_first():
    denoiser = tiny_denoiser(self_condition=True)
    recorder = Recorder(denoiser)
    ids, mask = batch()
    sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, generator=torch.Generator().manual_seed(0))
    assert len(recorder.calls) == 10
    assert torch.equal(recorder.calls[0][0], torch.zeros_like(recorder.calls[0][0]))
    for (_, before), (previous, _) in zip(recorder.calls, recorder.calls[1:]):
        assert torch.equal(previous, before.float())  # the raw estimate, not the rounded one


def test_self_conditioned_training_gives_half_the_examples_the_first_estimate_and_zeros_to_the_rest():
    denoiser = tiny_denoiser(self_condition=True)
    recorder = Recorder(denoiser)
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), "target")
    ids, mask = batch()
    ids, mask = ids.repeat(20, 1), mask.repeat(20, 1)  # 120 examples
    torch.manual_seed(5)
    objective(ids, mask, torch.randint(0, 50, (120,)))
    (first_input, first_estimate), (second_input, _) = recorder.calls
    assert first_input is None  # the first pass has no estimate to see (zeros inside the model)
    kept = (second_input == first_estimate).flatten(1).all(1)
    dropped = (second_input == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 30 < int(kept.sum()) < 90


def test_a_denoiser_without_self_conditioning_is_unchanged():
    plain = tiny_denoiser()
    assert plain.up_proj[0].in_features == 16 and tiny_denoiser(self_condition=True).up_proj[0].in_features == 32


def test_pre_norm_leaves_the_residual_stream_unnormalised_and_adds_one_final_norm():
    post, pre = tiny_denoiser(), tiny_denoiser(norm="pre")
    assert set(pre.state_dict()) - set(post.state_dict()) == {"final_norm.weight", "final_norm.bias"}
    assert set(post.state_dict()) <= set(pre.state_dict())
    h = 5 * torch.randn(3, 7, 32) + 2
    for model in (post, pre):  # branches that add nothing: what is left is where the norms sit
        layer = model.layers[0]
        with torch.no_grad():
            for linear in (layer.attn_out, layer.ffn_out):
                linear.weight.zero_(), linear.bias.zero_()
        out = layer(h)
        if model is pre:
            assert torch.equal(out, h)  # the residual stream passes through untouched
        else:
            torch.testing.assert_close(out, layer.ffn_norm(layer.attn_norm(h)))
            assert out.std(-1, correction=0).mean().item() == pytest.approx(1.0, abs=1e-3)
    ids, mask = batch()
    z, t = post.embed(ids), torch.full((6,), 10.0)
    pre.load_state_dict({**post.state_dict(), **{k: v for k, v in pre.state_dict().items() if k.startswith("final")}})
    assert not torch.allclose(post(z, t), pre(z, t))  # the same weights compute another function


def test_anchor_loss_adds_the_cross_entropy_of_the_estimate_on_the_noised_positions():
    denoiser = tiny_denoiser()
    ids, mask = batch()
    t = torch.tensor([0, 3, 10, 20, 30, 49])
    terms = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(7)
        terms[weight] = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), "target", anchor_loss=weight)(ids, mask, t)
    assert "anchor" not in terms[0.0]
    torch.testing.assert_close(terms[2.0]["loss"], terms[0.0]["loss"] + 2.0 * terms[2.0]["anchor"])
    # by hand: cross-entropy of lm_head(f(z_t)) at the target positions only
    torch.manual_seed(7)
    objective = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), "target")
    _, _, z_t = objective.noised(ids, mask, t)
    logits = denoiser.logits(denoiser(z_t, objective.schedule.model_timesteps(t)))
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    torch.testing.assert_close(terms[2.0]["anchor"], (ce * mask).sum(1) / mask.sum(1))


def test_loss_terms_split_the_mse_into_source_and_target_positions():
    denoiser = tiny_denoiser()
    ids, mask = batch()
    torch.manual_seed(2)
    terms = DiffusionObjective(denoiser, Schedule.named("sqrt", 50), "target")(ids, mask, torch.full((6,), 30))
    # with equal source and target counts weighting, their mean is the mse over every position
    n_source, n_target = 10, 14
    torch.testing.assert_close((terms["mse_source"] * n_source + terms["mse_target"] * n_target) / 24, terms["mse"])


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
    ids, mask = batch()

    def sample(**options):
        return sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, rounding="logits",
                             generator=torch.Generator().manual_seed(0), **options)

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
    ids, mask = batch()
    mask[3:, 10:14] = 0  # sources of two lengths: the target's [CLS] at position 10 or 14
    ids[:3, 10], ids[3:, 14] = CLS, CLS

    rounded = []  # the token ids of every rounding: the denoiser embeds them for the next step
    embed = denoiser.embed
    denoiser.embed = lambda token_ids: (rounded.append(token_ids), embed(token_ids))[1]

    def sample(**options):
        rounded.clear()
        tokens = sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, rounding=rounding,
                               generator=torch.Generator().manual_seed(0), **options)
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
    with pytest.raises(ValueError, match="min_target_tokens needs a rounding that picks tokens"):
        sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, rounding="soft", min_target_tokens=1)


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
    ids, mask = batch()

    def sample(**options):
        return sample_tokens(denoiser, Schedule.named("sqrt", 10), ids, mask, solver="dpm++2m",
                             generator=torch.Generator().manual_seed(0), **options)

    hard = sample(rounding="logits")
    assert torch.equal(sample(rounding="soft", soft_temperature=1e-4), hard)
    assert not torch.equal(sample(rounding="soft", soft_temperature=3.0), hard)


def test_sampler_refuses_an_unknown_rounding():
    ids, mask = batch()
    with pytest.raises(ValueError, match="rounding"):
        sample_tokens(tiny_denoiser(), Schedule.named("sqrt", 5), ids, mask, rounding="cosine")


# --- EMA and learning-rate warm-up --------------------------------------------------------------

def test_ema_warmup_follows_its_formula():
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema = EMA(module, rate=0.99, warmup=True)
    assert [round(ema.rate_at(n), 6) for n in (1, 2, 10, 1000)] == [round(2 / 11, 6), 0.25, round(11 / 20, 6), 0.99]
    shadow = 0.0
    for step in range(1, 6):
        with torch.no_grad():
            module.weight.fill_(float(step))
        ema.update(step)
        rate = min(0.99, (1 + step) / (10 + step))
        shadow = rate * shadow + (1 - rate) * step
        assert math.isclose(ema.shadow[0].item(), shadow, rel_tol=1e-6)
    assert EMA(module, rate=0.99).rate_at(1) == 0.99  # without warm-up: the rate throughout


def test_learning_rate_warmup_then_the_schedule():
    from dataclasses import replace

    from diffusion.config import Config, TrainConfig
    from diffusion.train import learning_rate_factor

    cfg = Config(train=TrainConfig(steps=100, warmup_steps=10))
    factor = learning_rate_factor(cfg)
    # (step + 1) / 10 during the warm-up, times DiffuSeq's linear decay 1 - step / 100
    assert [round(factor(s), 6) for s in (0, 4, 9, 50)] == [0.1, 0.5 * 0.96, 0.91, 0.5]
    plain = learning_rate_factor(replace(cfg, train=replace(cfg.train, warmup_steps=0)))
    assert plain(0) == 1.0 and plain(50) == 0.5


# --- the trainer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=600, n_valid=20, n_test=5)


BEFORE_BUDGET_KEYS = "eeafd91"  # the last commit before the budget-recipe keys existed


@pytest.mark.parametrize("zero_stage", [2, 0])
def test_with_every_new_key_at_its_default_training_is_bitwise_what_it_was(tmp_path, corpus, zero_stage):
    """The same tiny run by the trainer of commit eeafd91 (from this clone's history) and by today's:
    the same floats and the same parameters. Compared on this machine, not against recorded floats,
    which differ between CPUs (an AMD and an Intel machine disagreed in the 7th digit). ZeRO-0 too:
    on one rank today's trainer skips DeepSpeed's all-reduce, which must change no float."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_BUDGET_KEYS, "diffusion"], capture_output=True)
    assert archive.returncode == 0, f"needs the git history of {BEFORE_BUDGET_KEYS} (a full clone): {archive.stderr[-300:]}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=6, save_every=6,
                                                        zero_stage=zero_stage))
    (summary,) = run_module("diffusion.train", cfg, tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(old)}
    before = subprocess.run([sys.executable, "-m", "diffusion.train", str(cfg), str(tmp_path / "before")], cwd=old,
                            env=env, capture_output=True, text=True, timeout=300)
    assert before.returncode == 0, before.stderr[-2000:]
    before_summary = json.loads(before.stdout.strip().splitlines()[-1])
    log = read_log(tmp_path / "run")
    assert [r["loss"] for r in log] == [r["loss"] for r in read_log(tmp_path / "before")]
    assert summary["parameters_sha256"] == before_summary["parameters_sha256"]
    # the log now carries each term and both speeds; untrimmed, every position is counted
    assert set(log[-1]["terms"]) == {"mse", "nll", "tT", "mse_source", "mse_target"}
    assert 0 < log[-1]["real_tokens_per_s"] < log[-1]["tokens_per_s"]


def test_adam_beta2_reaches_the_optimizer_and_nothing_before_it(tmp_path, corpus):
    losses = {}
    for beta2 in (0.999, 0.95):
        cfg = write_config(tmp_path / f"c{beta2}.yaml", tiny_config(corpus["train"], steps=3, save_every=3, adam_beta2=beta2))
        run_module("diffusion.train", cfg, tmp_path / f"run{beta2}")
        losses[beta2] = [r["loss"] for r in read_log(tmp_path / f"run{beta2}")]
    assert losses[0.999][0] == losses[0.95][0]  # the same first batch through the same initial weights
    assert losses[0.999][1:] != losses[0.95][1:]  # then the updates differ


def budget_config(train_path, **train):
    cfg = tiny_config(train_path, **train)
    cfg["data"]["trim"] = True
    cfg["model"]["self_condition"] = True
    cfg["diffusion"]["anchor_loss"] = 1.0
    cfg["model"]["norm"] = "pre"
    cfg["train"].update(ema_warmup=True, warmup_steps=4, grad_clip=1.0)
    return cfg


def test_resume_stays_bitwise_with_the_new_keys_on(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", budget_config(corpus["train"], steps=9, save_every=3))
    run_module("diffusion.train", cfg, tmp_path / "straight")
    run_module("diffusion.train", cfg, tmp_path / "resumed", "--stop-after", 3)
    run_module("diffusion.train", cfg, tmp_path / "resumed")
    straight, resumed = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["terms"] for r in resumed] == [r["terms"] for r in straight]
    assert "anchor" in straight[-1]["terms"]
    a = torch.load(tmp_path / "straight/checkpoints/step_0000009/model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed/checkpoints/step_0000009/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trimmed_decoding_reads_untrimmed_references(tmp_path, corpus):
    from diffusion.checkpoint import load_exported
    from diffusion.data import decode, split_sequence
    from diffusion.sample import generate

    cfg = budget_config(corpus["train"], steps=2, save_every=2)
    cfg["data"]["target_ratio"] = 0.0
    cfg["data"]["target_margin"] = 4  # room for two target tokens: most references are longer
    run_module("diffusion.train", write_config(tmp_path / "c.yaml", cfg), tmp_path / "run")
    trained_cfg, denoiser, tokenizer = load_exported(tmp_path / "run/checkpoints/step_0000002")
    pairs = [json.loads(line) for line in open(corpus["valid"])]
    rows = generate(denoiser, trained_cfg, tokenizer, pairs, 101, trained_cfg.sample, torch.device("cpu"))
    full_ids, full_mask = encode_pairs(tokenizer, pairs, trained_cfg.data.seq_len)
    references = [decode(tokenizer, split_sequence(i, m)[1]) for i, m in zip(full_ids, full_mask)]
    assert [r["ref"] for r in rows] == references  # in the order of the pairs, not of the widths
    assert max(len(tokenizer.encode(r, add_special_tokens=False).ids) for r in references) > 2


@pytest.mark.parametrize("noising", ["target", "full"])
def test_seeds_decoded_together_get_the_tokens_each_gets_alone(tmp_path, corpus, noising):
    import dataclasses

    from diffusion.checkpoint import load_exported
    from diffusion.sample import generate, generate_seeds

    run_module("diffusion.train", write_config(tmp_path / "c.yaml", budget_config(corpus["train"], steps=2, save_every=2)),
               tmp_path / "run")
    cfg, denoiser, tokenizer = load_exported(tmp_path / "run/checkpoints/step_0000002")
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, noising=noising))
    # DDPM draws fresh noise at every step (and full noising re-noises the source): every draw counts
    sample_cfg = dataclasses.replace(cfg.sample, solver="ddpm", steps=8, batch_size=48)
    pairs = [json.loads(line) for line in open(corpus["valid"])][:40]
    rows_seen = []
    forward = denoiser.forward
    denoiser.forward = lambda z, *args: (rows_seen.append(len(z)), forward(z, *args))[1]
    together = generate_seeds(denoiser, cfg, tokenizer, pairs, [101, 102, 103], sample_cfg, torch.device("cpu"))
    calls_together, rows_together = len(rows_seen), sum(rows_seen)
    rows_seen.clear()
    alone = [generate(denoiser, cfg, tokenizer, pairs, seed, sample_cfg, torch.device("cpu")) for seed in (101, 102, 103)]
    assert calls_together < len(rows_seen) and rows_together == sum(rows_seen)  # fewer, fuller batches
    assert max(rows_seen) <= sample_cfg.batch_size
    assert together == alone
    assert together[0] != together[1]  # the seeds do differ


# --- metrics, spec, the budget specs end to end ----------------------------------------------

def test_score_reports_the_share_of_empty_outputs():
    assert score(["", "a b", " "], ["x", "a b", "y"], bertscore_model=None)["empty"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("key, value, message", [
    ("data.target_margin", 2, "at least 3"),
    ("data.target_ratio", -1, "at least 0"),
    ("diffusion.anchor_loss", -0.5, "at least 0"),
    ("train.warmup_steps", -1, "at least 0"),
    ("sample.rounding", "nearest", "must be one of"),
    ("sample.pad_penalty", -1, "at least 0"),
    ("diffusion.source_noise", 1.5, "must be in \\[0, 1\\]"),
    ("diffusion.source_noise", 0.5, "read by full noising only"),
    ("sample.soft_temperature", 0, "must be positive"),
    ("train.adam_beta2", 1.0, "must be in \\(0, 1\\)"),
    ("model.norm", "middle", "must be one of"),
    ("sample.soft_temperature", 0.5, "read by rounding soft only"),
    ("sample.min_target_tokens", -1, "at least 0"),
    ("sample.min_target_tokens", 7, "7 do not fit a trimmed target of data.target_margin 8"),
])
def test_budget_keys_are_validated_with_named_errors(key, value, message):
    from pipeline.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/qqp_fast_target.yaml", [f"{key}={value}"])


def test_min_target_tokens_with_soft_rounding_is_refused_by_name():
    from pipeline.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="sample.min_target_tokens: needs a rounding that picks tokens"):
        load_spec(REPO / "jobs/qqp_fast_target.yaml", ["sample.min_target_tokens=1", "sample.rounding=soft"])


def test_source_noise_with_joint_sampling_is_refused_by_name():
    from pipeline.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="diffusion.source_noise: 0.5 needs sample.full_mode conditional"):
        load_spec(REPO / "jobs/qqp_fast_full.yaml", ["diffusion.source_noise=0.5", "sample.full_mode=joint"])
    assert load_spec(REPO / "jobs/qqp_fast_full.yaml", ["diffusion.source_noise=0.5"]).diffusion.source_noise == 0.5


def test_the_report_recipe_keeps_every_budget_key_at_its_default():
    from diffusion.config import DiffusionConfig, SampleConfig, TrainConfig
    from pipeline.spec import load_spec

    for name in ("qqp_target", "qqp_full"):
        spec = load_spec(REPO / f"jobs/{name}.yaml")
        assert not spec.data.trim and not spec.model.self_condition
        assert spec.model.norm == ModelConfig().norm == "post"
        assert spec.diffusion.anchor_loss == DiffusionConfig().anchor_loss == 0.0
        assert (spec.train.warmup_steps, spec.train.ema_warmup) == (TrainConfig().warmup_steps, False)
        assert spec.sample.rounding == SampleConfig().rounding == "l2"
        assert spec.sample.pad_penalty == SampleConfig().pad_penalty == 0.0
        assert spec.sample.min_target_tokens == SampleConfig().min_target_tokens == 0
        assert spec.diffusion.source_noise == DiffusionConfig().source_noise == 1.0
        assert (spec.sample.solver, spec.sample.steps) == (SampleConfig().solver, None) == ("ddpm", None)


TINY = ["model.hidden_size=64", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=128", "model.embed_dim=16",
        "train.steps=20", "train.save_every=10", "train.batch_size=64", "train.micro_batch_size=64",
        "train.log_every=5", "train.warmup_steps=5", "diffusion.steps=50", "data.vocab_size=500",
        "resources.train.gpus=0", "resources.sample.gpus=0", "resources.evaluate.gpus=0",
        "evaluate.bertscore_model=null", "sample.max_examples=20"]


@pytest.mark.slow
@pytest.mark.skipif(not QQP_TRAIN.is_file(), reason="../shared/data/qqp is not beside the repo")
@pytest.mark.parametrize("spec, mode, source_noise", [("target", "target", 1.0), ("full", "full", 1.0),
                                                     ("full_quiet", "full", 0.1)], ids=["target", "full", "full_quiet"])
def test_budget_spec_runs_end_to_end_on_the_cpu_with_tiny_overrides(tmp_path, spec, mode, source_noise):
    train = qqp_slice(QQP_TRAIN, 2000, tmp_path / "train.jsonl")
    valid = qqp_slice(QQP_VALID, 40, tmp_path / "valid.jsonl")
    sets = [a for s in TINY + [f"data.train={train}", f"data.valid={valid}"] for a in ("--set", s)]
    env = {**os.environ, "PIPELINE_ROOT": str(tmp_path / "runs"), "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", f"jobs/qqp_fast_{spec}.yaml", "--executor", "local",
                    "--wait", *sets], cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    run = tmp_path / "runs" / f"qqp-fast-{spec.replace('_', '-')}"
    metrics = [json.loads(p.read_text()) for p in sorted((run / "metrics").glob("step_*.json"))]
    assert [m["step"] for m in metrics] == [10, 20] and metrics[0]["noising"] == mode
    progress = json.loads((run / "samples/step_0000020/progress.json").read_text())  # what status estimates from
    assert progress["decoded"] == progress["total"] == 20
    diagnostics = metrics[-1]["diagnostics"]
    assert set(diagnostics["token_accuracy"]) == set(diagnostics["rounding_accuracy"]) == {"t=0", "t=5", "t=25", "t=48"}
    assert diagnostics["embedding_norm"] > 0 and diagnostics["pad_norm"] > 0
    assert "empty" in metrics[-1]["rows"]["single"]
    log = read_log(run)
    assert {"mse_source", "mse_target"} <= set(log[-1]["terms"]) and "anchor" not in log[-1]["terms"]  # anchor off
    assert log[-1]["real_tokens_per_s"] > 0.5 * log[-1]["tokens_per_s"]
    table = (run / "results" / "table.md").read_text()
    assert "empty" in table and "Copy source" in table
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["diffusion"]["source_noise"] == source_noise  # what train, sample and evaluate read
