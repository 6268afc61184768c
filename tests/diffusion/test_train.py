"""Training on DeepSpeed (CPU, gloo): learning, exact resume, two ranks, checkpoints."""

import json

import pytest
import torch

from diffusion import checkpoint, manifest, metrics
from diffusion.corpus import write_corpus
from diffusion.sample import generate
from diffusion.model import Denoiser
from tests.helpers import read_log, run_module, tiny_config, write_config


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
    (summary,) = run_module("diffusion.sample", folder, corpus["valid"], tmp_path / "s.jsonl", "--max-examples", 8)
    rows = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert summary["pairs"] == 8 and len(rows) == 8 and set(rows[0]) == {"src", "ref", "hyp"}


def test_the_trainer_leaves_exactly_the_planned_checkpoints_and_a_heartbeat(tmp_path, corpus):
    # 5 steps, save_every 2: the last step is not a multiple and still gets one
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=5, save_every=2))
    run_module("diffusion.train", cfg, tmp_path / "run")
    written = [step for step, _ in checkpoint.complete_steps(tmp_path / "run" / "checkpoints")]
    assert written == manifest.checkpoint_steps(5, 2) == [2, 4, 5]
    assert json.loads((tmp_path / "run" / manifest.HEARTBEAT).read_text())["step"] == 5


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
