"""Submission fetches what jobs would download into the results root's cache; compute nodes run offline."""

from pipeline.prefetch import cache_dir, cache_environment, prefetch
from pipeline.spec import load_spec
from tests.pipeline.test_pipeline import SMALL, pipeline


def test_a_model_that_cannot_be_fetched_refuses_the_submission_and_writes_nothing(tmp_path):
    root = tmp_path / "runs"
    proc = pipeline("submit", "jobs/demo_target.yaml", *SMALL, "--set", "evaluate.bertscore_model=no-such-org/no-such-model",
                    root=root, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "evaluate.bertscore_model" in proc.stderr and "no-such-org/no-such-model" in proc.stderr
    assert not (root / "demo-target").exists()  # fix the spec and submit again: nothing to clean up


def test_a_model_already_in_the_cache_needs_no_network(tmp_path):
    snapshot = cache_dir(tmp_path) / "hub" / "models--some-org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    spec = load_spec("jobs/demo_target.yaml", ["evaluate.bertscore_model=some-org/tiny"])
    assert prefetch(spec, tmp_path) == [str(snapshot)]
    env = cache_environment(tmp_path, offline=True)
    assert env["HF_HOME"] == str(cache_dir(tmp_path)) and env["HF_HUB_OFFLINE"] == "1"


def test_local_and_packaged_models_need_nothing(tmp_path):
    assert prefetch(load_spec("jobs/demo_target.yaml", []), tmp_path) == []
    assert not (tmp_path / ".cache").exists()


def test_prefetch_spec_and_metrics_name_the_same_models():
    import inspect

    from diffusion import metrics
    from pipeline.prefetch import needs_hub_model
    from pipeline.spec import EvaluateSpec

    default = metrics.DEFAULT_BERTSCORE_MODEL
    assert EvaluateSpec().bertscore_model == default
    assert inspect.signature(metrics.score).parameters["bertscore_model"].default == default
    assert inspect.signature(metrics.bertscore).parameters["model"].default == default
    assert needs_hub_model(default)  # fetched at submit
    assert not needs_hub_model(metrics.OFFLINE_PACKAGE_MODEL)  # the one name metrics resolves to a package folder
    assert metrics.resolve_bertscore_model(default) == default
