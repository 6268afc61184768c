"""Each `python -m diffusion.bench` subcommand runs on the CPU at a tiny size and prints the figures
a user reads (the figures themselves come from GPU runs, not from CI)."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, integration, run_module

pytestmark = integration  # each test spawns the CLI

TINY_TRAIN = ("--tiny", "--batch-size", "32", "--micro-batch", "16", "--steps", "1")
TINY_SAMPLE = ("--tiny", "--sample-batch", "4", "--sample-steps", "3")
TRAIN_FIGURES = {"s_per_step", "tokens_per_s_per_gpu", "tokens_per_s_total", "tflops_per_gpu", "share_of_peak",
                 "share_of_measured_peak", "peak_memory_gib", "first_step_s", "zero_optimization", "loss"}
SAMPLE_FIGURES = {"sentences_per_s_at_T", "T", "s_per_reverse_step", "s_rounding_per_step",
                  "rounding_agreement_with_fp32", "peak_memory_gib", "warmup_s", "weights"}


def bench_cli(*args) -> subprocess.CompletedProcess:
    """`python -m diffusion.bench ARGS` whatever its exit status (run_module wants 0)."""
    return subprocess.run([sys.executable, "-m", "diffusion.bench", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}, timeout=120)


def test_benchmark_runs_and_reports_its_figures():
    """No subcommand: train and sample in one line, with the options of before the subcommands."""
    (result,) = run_module("diffusion.bench", *TINY_TRAIN, *TINY_SAMPLE)
    assert result["train"]["tokens_per_s_per_gpu"] > 0 and result["sample"]["sentences_per_s_at_T"] > 0
    assert result["world_size"] == 1 and result["precision"] == "fp32"
    assert TRAIN_FIGURES <= set(result["train"]) and SAMPLE_FIGURES <= set(result["sample"])


def test_train_subcommand_reports_throughput_and_profile():
    (result,) = run_module("diffusion.bench", "train", *TINY_TRAIN, "--zero-stage", "0", "--profile")
    train = result["train"]
    assert "sample" not in result and TRAIN_FIGURES <= set(train)
    assert train["tokens_per_s_per_gpu"] > 0 and train["tflops_per_gpu"] > 0 and 0 < train["share_of_peak"] < 1
    assert train["peak_memory_gib"] is None and train["share_of_measured_peak"] is None  # no card to read
    assert result["zero_stage"] == 0 == train["zero_optimization"]["stage"]
    assert result["batch_size_per_gpu"] == 32 and result["micro_batch"] == 16 and result["parameters"] > 0
    assert isinstance(train["profile"], dict)  # the host's stalls of one profiled step (none may show on a CPU)


@pytest.mark.slow  # two processes (the marker's "multi-process"), about 10 s
def test_train_subcommand_under_torchrun():
    """Two ranks at ZeRO-2: one line, from rank 0, counting both ranks' tokens."""
    (result,) = run_module("diffusion.bench", "train", *TINY_TRAIN, "--zero-stage", "2", nproc=2)
    train = result["train"]
    assert result["world_size"] == 2 and train["zero_optimization"]["stage"] == 2
    assert train["tokens_per_s_total"] == pytest.approx(2 * train["tokens_per_s_per_gpu"])


def test_sample_subcommand_reports_throughput():
    (result,) = run_module("diffusion.bench", "sample", *TINY_SAMPLE)
    sample = result["sample"]
    assert "train" not in result and "zero_stage" not in result and SAMPLE_FIGURES <= set(sample)
    assert sample["sentences_per_s_at_T"] > 0 and sample["T"] == 2000 and sample["batch"] == 4
    assert sample["weights"] == "fp32" and sample["fidelity"] is None  # the CPU samples in fp32
    assert result["device"] == "cpu" and result["seq_len"] == 128


def test_profile_subcommand_times_every_variant(tmp_path):
    """The demo's recipe (ZeRO-0, one micro-batch a step) on a smaller corpus (quicker to prepare), clipping
    on so that the clip variants differ."""
    variants = ["shipped", "graphed", "deepspeed_clip", "deepspeed_allreduce", "deepspeed_both"]
    lines = run_module("diffusion.bench", "profile", "jobs/demo_target.yaml", "--set", "train.grad_clip=1.0",
                       "--set", "data.synthetic_pairs=1000", "--steps", "2", "--rounds", "1", "--warmup", "1",
                       "--variants", ",".join(variants), "--workdir", tmp_path)
    header, warmup, *rounds = lines[:-len(variants)]
    traces = lines[-len(variants):]
    assert header["device"] == "cpu" and header["grad_clip"] == 1.0 and header["zero_stage"] == 0
    assert warmup["warmup_s"] >= 0
    assert [row["variant"] for row in rounds] == variants
    assert all(row["s_per_step"] > 0 and row["real_tokens_per_s"] > 0 and row["loss"] > 0 for row in rounds)
    assert [trace["profile"] for trace in traces] == variants
    assert all("CUDA GPU" in trace["skipped"] for trace in traces)  # the kernel trace is the card's


def test_profile_subcommand_refuses_zero_2():
    proc = bench_cli("profile", "jobs/demo_target.yaml", "--set", "train.zero_stage=2")
    assert proc.returncode == 1 and "ZeRO-0" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_attention_subcommand_says_it_needs_a_gpu():
    proc = bench_cli("attention")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "python -m diffusion.bench attention needs a CUDA GPU (torch sees none here): nothing checked"]


def test_unknown_subcommand_names_the_subcommands():
    proc = bench_cli("trian")
    assert proc.returncode == 2 and "train, sample, profile, decode, attention" in proc.stderr


def test_decode_subcommand_times_rounds_of_what_diffusion_sample_writes(tmp_path):
    """A tiny trained checkpoint decoding a split twice in one process, MBR over two seeds: each
    round's outputs are the first's, and their scores are those of diffusion.sample's file."""
    import json

    from diffusion import metrics
    from diffusion.corpus import write_corpus
    from tests.helpers import tiny_config, write_config

    corpus = write_corpus(tmp_path / "corpus", n_train=300, n_valid=12, n_test=2)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(corpus["train"], steps=2, save_every=2, zero_stage=0))
    run_module("diffusion.train", cfg, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000002"
    sets = ["--set", "sample.steps=4", "--set", "sample.seeds=[101,102]"]
    header, *rounds, scores, traced = run_module("diffusion.bench", "decode", checkpoint, corpus["valid"], *sets,
                                                 "--rounds", "2", "--profile")
    assert header["pairs"] == 12 and header["seeds"] == [101, 102] and header["steps"] == 4
    assert [r["round"] for r in rounds] == [0, 1] and all(r["same_as_first"] for r in rounds)
    assert all(r["seconds"] > 0 and r["sentences_per_s"] > 0 for r in rounds)
    assert "CUDA GPU" in traced["profile"]["skipped"]
    header, *_ = run_module("diffusion.bench", "decode", checkpoint, corpus["valid"], *sets, "--rounds", "1",
                            "--set", "sample.attention=efficient", "--set", "sample.cuda_graphs=true")
    assert header["attention"] == "efficient" and header["cuda_graphs"] is True
    refused = bench_cli("decode", checkpoint, corpus["valid"], "--set", "sample.attention=fast")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "error: sample.attention: must be one of" in refused.stderr
    run_module("diffusion.sample", checkpoint, corpus["valid"], tmp_path / "out.jsonl", *sets)
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    written = metrics.score([r["hyp"] for r in rows], [r["ref"] for r in rows], [r["src"] for r in rows],
                            bertscore_model=None)
    assert (scores["bleu"], scores["rouge_l"], scores["copy_bleu"]) == (
        written["bleu"], written["rouge_l"], written["self_bleu_src"])
