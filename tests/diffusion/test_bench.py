"""The benchmark runs on the CPU at a tiny size (its figures come from GPU runs, not from CI)."""

from tests.helpers import integration, run_module

pytestmark = integration  # each test spawns the CLI or a trainer


def test_benchmark_runs_and_reports_its_figures():
    (result,) = run_module("diffusion.bench", "--tiny", "--batch-size", "32", "--micro-batch", "16",
                           "--sample-batch", "4", "--sample-steps", "3", "--steps", "1")
    assert result["train"]["tokens_per_s_per_gpu"] > 0 and result["sample"]["sentences_per_s_at_T"] > 0
    assert result["world_size"] == 1 and result["precision"] == "fp32"
