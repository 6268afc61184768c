"""What `pipeline status` estimates from a run's files."""

import pytest

from tests.helpers import REPO


def test_status_estimates_the_sample_stage_from_the_tasks_progress(tmp_path):
    from diffusion import atomic
    from pipeline.layout import RunLayout
    from pipeline.spec import load_spec
    from pipeline.status import sampling_progress

    spec = load_spec(REPO / "jobs/demo_target.yaml",
                     ["sample.solver=dpm++2m", "sample.steps=20", "sample.seeds=[1,2]"])
    layout = RunLayout(tmp_path, "run")
    rows = [{"step": 100, "state": "done"}, {"step": 200, "state": "running"}, {"step": 300, "state": "waiting-for-input"}]
    assert sampling_progress(layout, spec, rows) == {"solver": "dpm++2m", "steps": 20, "seeds": 2}  # nothing measured yet
    atomic.write_json(layout.sample_progress(100), {"decoded": 40, "total": 40, "elapsed_s": 4.0, "time": 0})
    atomic.write_json(layout.sample_progress(200), {"decoded": 10, "total": 40, "elapsed_s": 1.0, "time": 0})
    estimate = sampling_progress(layout, spec, rows)
    assert (estimate["decoded"], estimate["total"]) == (50, 120)
    assert estimate["sentences_per_s"] == pytest.approx(10.0)  # 50 candidates in 5 task-seconds
    assert estimate["eta_s"] == pytest.approx(7.0)  # 70 left, one task at a time
