"""The budget specs (jobs/qqp_fast_*.yaml) through the pipeline on the CPU, with tiny overrides: every
stage, each checkpoint's metrics and diagnostics, the per-term logs, the table."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import QQP_TRAIN, QQP_VALID, REPO, needs_qqp, qqp_slice
from tests.helpers import integration, read_log


TINY = ["model.hidden_size=64", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=128", "model.embed_dim=16",
        "train.steps=20", "train.save_every=10", "train.batch_size=64", "train.micro_batch_size=64",
        "train.log_every=5", "train.warmup_steps=5", "diffusion.steps=50", "data.vocab_size=500",
        "resources.train.gpus=0", "resources.sample.gpus=0", "resources.evaluate.gpus=0",
        "evaluate.bertscore_model=null", "sample.max_examples=20"]


@integration
@pytest.mark.slow
@needs_qqp
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
