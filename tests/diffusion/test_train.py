"""Training on DeepSpeed (CPU, gloo): learning, exact resume, two ranks, checkpoints."""

import json
import os
import subprocess
import sys

import pytest
import torch

from diffusion import checkpoint, manifest, metrics
from diffusion.corpus import write_corpus
from diffusion.sample import generate
from diffusion.model import Denoiser
from diffusion.data import encode_pairs
from tests.helpers import REPO, integration, read_log, run_module, tiny_config, write_config

pytestmark = integration  # each test spawns the CLI or a trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=3000, n_valid=80, n_test=10)


def sample_scores(cfg, denoiser, tokenizer, pairs):
    rows = generate(denoiser, cfg, tokenizer, pairs, 101, cfg.sample, torch.device("cpu"))
    return metrics.score([r["hyp"] for r in rows], [r["ref"] for r in rows], bertscore_model=None)


def test_tiny_model_learns_and_its_samples_approach_the_references(tmp_path, corpus):
    cfg = tiny_config(corpus["train"], steps=300, batch_size=64, micro_batch_size=64, save_every=300,
                      log_every=50, zero_stage=0, ema_rate=0.95)
    cfg["model"]["hidden_size"] = 128
    run_module("diffusion.train", write_config(tmp_path / "c.yaml", cfg), tmp_path / "run")
    log = read_log(tmp_path / "run")
    assert log[-1]["step"] == 300
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], [r["loss"] for r in log]

    folder = tmp_path / "run" / "checkpoints" / "step_0000300"
    trained_cfg, trained, tokenizer = checkpoint.load_exported(folder)
    torch.manual_seed(trained_cfg.train.seed)  # the trainer's initialisation: the model at step 0
    untrained = Denoiser(trained_cfg.model).eval()
    pairs = [json.loads(line) for line in open(corpus["valid"])]
    before = sample_scores(trained_cfg, untrained, tokenizer, pairs)
    after = sample_scores(trained_cfg, trained, tokenizer, pairs)
    assert after["rouge_l"] > before["rouge_l"] + 0.1, (before, after)
    assert after["bleu"] > before["bleu"] + 0.02, (before, after)


def test_resume_continues_bitwise_like_an_uninterrupted_run(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=12, save_every=3))
    run_module("diffusion.train", cfg, tmp_path / "straight")
    run_module("diffusion.train", cfg, tmp_path / "resumed", "--stop-after", 6)
    assert [r["step"] for r in read_log(tmp_path / "resumed")][-1] == 6
    # a half-written later checkpoint must be ignored on resume
    (tmp_path / "resumed" / "checkpoints" / ".step_0000009.partial").mkdir()
    run_module("diffusion.train", cfg, tmp_path / "resumed")
    straight = {r["step"]: r["loss"] for r in read_log(tmp_path / "straight")}
    resumed = {r["step"]: r["loss"] for r in read_log(tmp_path / "resumed")}
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == straight  # bitwise: the same floats
    a = torch.load(tmp_path / "straight/checkpoints/step_0000012/model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed/checkpoints/step_0000012/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # re-running a finished run does nothing and changes nothing
    (summary,) = run_module("diffusion.train", cfg, tmp_path / "resumed")
    assert summary["step"] == 12 and len(read_log(tmp_path / "resumed")) == 12


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_rank_zero_run_agrees_across_ranks_and_samples_on_one_process(tmp_path, corpus, stage):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=8, save_every=4, zero_stage=stage))
    summaries = run_module("diffusion.train", cfg, tmp_path / "run", nproc=2)
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    if stage == 2:  # under ZeRO-3 each rank holds a shard; the exported file below is the check
        assert summaries[0]["parameters_sha256"] == summaries[1]["parameters_sha256"]
    folder = tmp_path / "run" / "checkpoints" / "step_0000008"
    meta = checkpoint.verify(folder)
    assert meta["world_size"] == 2 and (folder / "rank_00001.pt").is_file()
    (summary,) = run_module("diffusion.sample", folder, corpus["valid"], tmp_path / "s.jsonl", "--set", "sample.max_examples=8")
    rows = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert summary["pairs"] == 8 and len(rows) == 8 and set(rows[0]) == {"src", "ref", "hyp"}


def test_the_trainer_leaves_exactly_the_planned_checkpoints_and_a_heartbeat(tmp_path, corpus):
    # 5 steps, save_every 2: the last step is not a multiple and still gets one
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=5, save_every=2))
    run_module("diffusion.train", cfg, tmp_path / "run")
    written = [step for step, _ in checkpoint.complete_steps(tmp_path / "run" / "checkpoints")]
    assert written == manifest.checkpoint_steps(5, 2) == [2, 4, 5]
    assert json.loads((tmp_path / "run" / manifest.HEARTBEAT).read_text())["step"] == 5


def test_a_save_between_log_lines_checks_the_loss_first_and_keeps_only_finite_checkpoints(tmp_path, corpus):
    # lr 1e30: the loss is nan from step 2; a checkpoint every step, a log line every 10
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=10, save_every=1, log_every=10, lr=1e30))
    proc = subprocess.run([sys.executable, "-m", "diffusion.train", cfg, tmp_path / "run"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("error: training diverged: the loss of steps 1-2 is nan; the last "
                                                    "checkpoint is step 1's (a lower train.lr or train.grad_clip may keep it finite)")
    assert [step for step, _ in checkpoint.complete_steps(tmp_path / "run" / "checkpoints")] == [1]


def test_corrupt_checkpoint_is_named(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=3, save_every=3))
    run_module("diffusion.train", cfg, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints" / "step_0000003"
    with open(folder / "model.pt", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="model.pt"):
        checkpoint.load_exported(folder)


def test_time_limit_stops_with_a_checkpoint_and_the_next_run_resumes(tmp_path, corpus):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=30, save_every=30))
    # 61 s leaves less than the 60 s margin plus three steps: stop after the first step, saved
    (summary,) = run_module("diffusion.train", cfg, tmp_path / "run", "--time-limit", 61)
    assert summary["stopped_for_time"] and not summary["finished"] and summary["step"] < 30
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == f"step_{summary['step']:07d}"
    (summary,) = run_module("diffusion.train", cfg, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 30


def test_zero0_clips_the_gradients_as_deepspeed_does_under_zero2_once_a_step(tmp_path, corpus):
    """At ZeRO-0 the trainer clips (fused, no host wait) instead of DeepSpeed; a clip small enough to
    shrink Adam's steps below its epsilon shows it clips, and clips the whole step's gradient (two
    micro-batches) as ZeRO-2's optimizer does, not each micro-batch."""
    exported = {}
    for name, stage, clip in (("zero0", 0, 1e-6), ("zero2", 2, 1e-6), ("unclipped", 0, 0.0)):
        cfg = tiny_config(corpus["train"], steps=3, save_every=3, zero_stage=stage, grad_clip=clip, ema_rate=0.0)
        run_module("diffusion.train", write_config(tmp_path / f"{name}.yaml", cfg), tmp_path / name)
        exported[name] = torch.load(tmp_path / name / "checkpoints/step_0000003/model.pt", weights_only=False)["state_dict"]
    zero0, zero2, unclipped = exported["zero0"], exported["zero2"], exported["unclipped"]
    assert all(torch.allclose(zero0[k], zero2[k], rtol=1e-5, atol=1e-7) for k in zero0)
    assert max((zero0[k] - unclipped[k]).abs().max().item() for k in zero0) > 1e-3


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("small_corpus"), n_train=600, n_valid=20, n_test=5)


BEFORE_BUDGET_KEYS = "eeafd91"  # the last commit before the budget-recipe keys existed


@pytest.mark.parametrize("zero_stage", [2, 0])
def test_with_every_new_key_at_its_default_training_is_bitwise_what_it_was(tmp_path, small_corpus, zero_stage):
    """The same tiny run by the trainer of commit eeafd91 (from this clone's history) and by today's:
    the same floats and the same parameters. Compared on this machine, not against recorded floats,
    which differ between CPUs (an AMD and an Intel machine disagreed in the 7th digit). ZeRO-0 too:
    on one rank today's trainer skips DeepSpeed's all-reduce, which must change no float."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_BUDGET_KEYS, "diffusion"], capture_output=True)
    assert archive.returncode == 0, f"needs the git history of {BEFORE_BUDGET_KEYS} (a full clone): {archive.stderr[-300:]}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(small_corpus["train"], steps=6, save_every=6,
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


def test_adam_beta2_reaches_the_optimizer_and_nothing_before_it(tmp_path, small_corpus):
    losses = {}
    for beta2 in (0.999, 0.95):
        cfg = write_config(tmp_path / f"c{beta2}.yaml", tiny_config(small_corpus["train"], steps=3, save_every=3, adam_beta2=beta2))
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


def test_resume_stays_bitwise_with_the_new_keys_on(tmp_path, small_corpus):
    cfg = write_config(tmp_path / "c.yaml", budget_config(small_corpus["train"], steps=9, save_every=3))
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


def test_trimmed_decoding_reads_untrimmed_references(tmp_path, small_corpus):
    from diffusion.checkpoint import load_exported
    from diffusion.data import decode, split_sequence
    from diffusion.sample import generate

    cfg = budget_config(small_corpus["train"], steps=2, save_every=2)
    cfg["data"]["target_ratio"] = 0.0
    cfg["data"]["target_margin"] = 4  # room for two target tokens: most references are longer
    run_module("diffusion.train", write_config(tmp_path / "c.yaml", cfg), tmp_path / "run")
    trained_cfg, denoiser, tokenizer = load_exported(tmp_path / "run/checkpoints/step_0000002")
    pairs = [json.loads(line) for line in open(small_corpus["valid"])]
    rows = generate(denoiser, trained_cfg, tokenizer, pairs, 101, trained_cfg.sample, torch.device("cpu"))
    full_ids, full_mask = encode_pairs(tokenizer, pairs, trained_cfg.data.seq_len)
    references = [decode(tokenizer, split_sequence(i, m)[1]) for i, m in zip(full_ids, full_mask)]
    assert [r["ref"] for r in rows] == references  # in the order of the pairs, not of the widths
    assert max(len(tokenizer.encode(r, add_special_tokens=False).ids) for r in references) > 2


@pytest.mark.parametrize("noising", ["target", "full"])
def test_seeds_decoded_together_get_the_tokens_each_gets_alone(tmp_path, small_corpus, noising):
    import dataclasses

    from diffusion.checkpoint import load_exported
    from diffusion.sample import generate, generate_seeds

    run_module("diffusion.train", write_config(tmp_path / "c.yaml", budget_config(small_corpus["train"], steps=2, save_every=2)),
               tmp_path / "run")
    cfg, denoiser, tokenizer = load_exported(tmp_path / "run/checkpoints/step_0000002")
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, noising=noising))
    # DDPM draws fresh noise at every step (and full noising re-noises the source): every draw counts
    sample_cfg = dataclasses.replace(cfg.sample, solver="ddpm", steps=8, batch_size=48)
    pairs = [json.loads(line) for line in open(small_corpus["valid"])][:40]
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


@pytest.mark.parametrize("sampler", ["lossaware", "uniform"])
def test_the_graphed_step_computes_what_the_plain_step_computes(tmp_path, small_corpus, sampler):
    """train.cuda_graphs on a CPU runs the graphed step eagerly: its own optimizer call with the
    learning rate as a tensor, the batch gathered from the indices, the sums kept in place. The
    losses and the parameters must be the plain step's, and a resumed run's too."""
    runs = {}
    for graphs in (False, True):
        cfg = budget_config(small_corpus["train"], steps=8, save_every=4, zero_stage=0, batch_size=16,
                            micro_batch_size=16, cuda_graphs=graphs)
        cfg["diffusion"]["timestep_sampler"] = sampler
        path = write_config(tmp_path / f"c{graphs}.yaml", cfg)
        (summary,) = run_module("diffusion.train", path, tmp_path / f"run{graphs}")
        runs[graphs] = (read_log(tmp_path / f"run{graphs}"), summary["parameters_sha256"])
        if graphs:
            run_module("diffusion.train", path, tmp_path / "resumed", "--stop-after", 4)
            (resumed,) = run_module("diffusion.train", path, tmp_path / "resumed")
    (plain_log, plain_digest), (graphed_log, graphed_digest) = runs[False], runs[True]
    assert [r["loss"] for r in graphed_log] == [r["loss"] for r in plain_log]
    assert [r["terms"] for r in graphed_log] == [r["terms"] for r in plain_log]
    assert [r["lr"] for r in graphed_log] == [r["lr"] for r in plain_log]
    assert graphed_digest == plain_digest
    assert [r["loss"] for r in read_log(tmp_path / "resumed")] == [r["loss"] for r in plain_log]
    assert resumed["parameters_sha256"] == plain_digest


def test_checkpoints_carry_the_training_targets_lengths_and_sampling_keeps_them(tmp_path, small_corpus):
    from diffusion.data import load_encoded
    from diffusion.lengths import length_table, load_table

    run_module("diffusion.train", write_config(tmp_path / "c.yaml", budget_config(small_corpus["train"], steps=2, save_every=2)),
               tmp_path / "run")
    folder = tmp_path / "run/checkpoints/step_0000002"
    assert load_table(folder) == length_table(*load_encoded(tmp_path / "run/data/train.pt"))
    checkpoint.verify(folder)  # the manifest lists the table with the other files
    out = tmp_path / "samples.jsonl"
    run_module("diffusion.sample", folder, small_corpus["valid"], out, "--set", "sample.target_length=predicted",
               "--set", "sample.seeds=[101,102]", "--set", "sample.length_offsets=[0,3]", "--set", "sample.steps=4")
    words = {seed: [len(json.loads(line)["hyp"].split()) for line in open(manifest.seed_samples(out, seed))]
             for seed in (101, 102)}
    assert min(words[101]) > 0  # an untrained model's outputs have their length all the same
    assert sum(words[102]) > sum(words[101])  # three tokens longer each


def test_a_model_told_its_target_lengths_trains_and_samples_them(tmp_path, small_corpus):
    cfg = budget_config(small_corpus["train"], steps=2, save_every=2, cuda_graphs=True, zero_stage=0, batch_size=16,
                        micro_batch_size=16)
    cfg["diffusion"]["clean_target_end"] = True
    cfg["sample"].update(target_length="predicted", steps=4)
    run_module("diffusion.train", write_config(tmp_path / "c.yaml", cfg), tmp_path / "run")
    out = tmp_path / "samples.jsonl"
    run_module("diffusion.sample", tmp_path / "run/checkpoints/step_0000002", small_corpus["valid"], out)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 20 and all(row["hyp"] for row in rows)
    # the checkpoint remembers that its model is told the lengths: learned lengths are refused
    failed = subprocess.run([sys.executable, "-m", "diffusion.sample", str(tmp_path / "run/checkpoints/step_0000002"),
                             str(small_corpus["valid"]), str(tmp_path / "x.jsonl"), "--set", "sample.target_length=learned"],
                            capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 2 and "diffusion.clean_target_end" in failed.stderr
