"""Studies: the study file (errors that name file, line and variant; --set on every variant;
decodings), and how a study goes out to a scheduler: the variants' training as one array on
Slurm (fake commands, test_scheduling.py's) and as one bulk job on PJM, one query a status.
The real runs: test_study_runs.py."""

import json
import textwrap

import pytest

from pipeline import study
from pipeline.layout import StudyLayout
from pipeline.plan import tasks
from pipeline.spec_yaml import SpecError
from pipeline.study_spec import is_study_file, load_study
from tests.helpers import REPO
from tests.pipeline.test_scheduling import jobs_of, pjm, slurm  # noqa: F401  (fixtures)

BASE = REPO / "jobs" / "demo_base.yaml"
TINY = ["train.steps=40", "train.save_every=20"]


def write(tmp_path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text).replace("BASE", str(BASE)))
    return path


def test_a_study_gives_one_run_a_variant_with_its_overrides_then_the_command_lines(tmp_path):
    path = write(tmp_path, """\
        study: ablate
        base: BASE
        set: {train.lr: 0.001}
        variants:
          target: {diffusion.noising: target}
          full: {diffusion.noising: full, sample.full_mode: joint, train.lr: 0.003}
        decodings:
          dpm-5: {sample.solver: dpm++2m, sample.steps: 5}
        """)
    assert is_study_file(path) and not is_study_file(REPO / "jobs" / "demo_target.yaml")
    found = load_study(path, [*TINY, "sample.max_examples=7"])
    target, full = found.runs["target"], found.runs["full"]
    assert (target.name, full.name) == ("ablate-target", "ablate-full")
    assert (target.diffusion.noising, full.diffusion.noising, full.sample.full_mode) == ("target", "full", "joint")
    assert (target.train.lr, full.train.lr) == (0.001, 0.003)  # the variant over the study's `set`
    assert target.train.steps == full.train.steps == 40  # --set: every variant
    # a decoding is the variant's own sample section (--set included) with its overrides
    dpm = full.decoding("dpm-5").sample
    assert (dpm.solver, dpm.steps, dpm.full_mode, dpm.max_examples) == ("dpm++2m", 5, "joint", 7)


@pytest.mark.parametrize("text, where", [
    ("study: s\nbase: BASE\nvariants:\n  a: {train.stpes: 3}\n", r"study.yaml:4: train.stpes: unknown key.*\(variant a\)"),
    ("study: s\nbase: BASE\nvariants:\n  a: {}\n  b:\n    diffusion.noising: loud\n",
     r"study.yaml:6: diffusion.noising: must be one of .*\(variant b\)"),
    ("study: s\nbase: BASE\nvariants:\n  a: {}\ndecodings:\n  d: {train.steps: 3}\n",
     r"study.yaml:6: decodings.d.train.steps: a decoding changes sample.\* keys only \(variant a\)"),
    ("study: s\nbase: BASE\nvariants:\n  a: {}\ndecodings:\n  d: {sample.steps: -2}\n",
     r"study.yaml:6: decodings.d.sample.steps: .*\(variant a\)"),
    ("study: s\nbase: nowhere.yaml\nvariants: {a: {}}\n", r"study.yaml:2: base: .*no such file"),
    ("study: s\nbase: BASE\nvariants: {a: {}}\nconcurrent_train: 0\n", r"study.yaml:4: concurrent_train: "),
    ("study: s\nbase: BASE\nvariant: {a: {}}\n", r"study.yaml:3: variant: unknown key"),
    ("study: s/x\nbase: BASE\nvariants: {a: {}}\n", r"study.yaml:1: study: "),
])
def test_study_file_errors_name_the_file_the_line_and_the_variant(tmp_path, text, where):
    path = write(tmp_path, text)
    assert is_study_file(path)
    with pytest.raises(SpecError, match=where):
        load_study(path)


def test_decodings_sample_the_last_checkpoint_or_every_one_each_its_own_task():
    found = load_study(REPO / "jobs" / "demo_study.yaml",
                       [*TINY, "decodings={dpm-5: {sample.steps: 5, sample.solver: dpm++2m}}"])
    names = [t.name for t in tasks(found.runs["target"])]
    assert names == ["preprocess", "train", "sample-0000020", "sample-0000040", "sample-0000040-dpm-5",
                     "evaluate-0000020", "evaluate-0000040", "evaluate-0000040-dpm-5", "aggregate"]
    every = load_study(REPO / "jobs" / "demo_study.yaml", [*TINY, "decode_checkpoints=all",
                                                          "decodings={dpm-5: {sample.steps: 5, sample.solver: dpm++2m}}"])
    assert "sample-0000020-dpm-5" in [t.name for t in tasks(every.runs["full"])]


def submitted(tmp_path, executor: str) -> StudyLayout:
    found = load_study(REPO / "jobs" / "demo_study.yaml", [*TINY, f"site.executor={executor}"])
    assert study.submit(found, tmp_path / "runs", None, wait=False) == 0
    return StudyLayout(tmp_path / "runs", "demo")


def test_on_slurm_the_variants_train_as_one_array_and_status_asks_sacct_once(slurm, tmp_path):  # noqa: F811
    layout = submitted(tmp_path, "slurm")
    target, full = (jobs_of(run) for run in study.run_layouts(layout))
    preprocess, train = target["preprocess"].split("_")[0], target["train"].split("_")[0]
    # each stage of the two runs one array: training waits task by task for the preprocess array
    assert (target["preprocess"], full["preprocess"]) == (f"{preprocess}_0", f"{preprocess}_1")
    assert (target["train"], full["train"]) == (f"{train}_0", f"{train}_1")
    assert slurm.job(train)["array"] == 2 and slurm.job(train)["dependency"] == f"aftercorr:{preprocess}"
    assert slurm.job(train)["name"] == "demo-train"
    # each run's sampling one array, waiting for that run's training
    assert slurm.job(target["sample-0000020"].split("_")[0])["dependency"] == f"afterok:{target['train']}"
    assert slurm.job(full["sample-0000020"].split("_")[0])["dependency"] == f"afterok:{full['train']}"
    before = slurm.calls("sacct")
    st = study.status(layout)
    assert slurm.calls("sacct") == before + 1 and st["scheduler_queries"] == 1
    assert [run["run"] for run in st["runs"]] == ["demo-target", "demo-full"]
    assert all(run["submitted"] == [] for run in st["runs"])  # everything was queued at submit
    # variants with equal data share one prepared folder
    assert {(run.data.resolve()) for run in study.run_layouts(layout)} == {next(layout.dir.glob("data/*")).resolve()}


def test_on_pjm_the_variants_train_as_one_bulk_job_once_their_data_is_ready(pjm, tmp_path):  # noqa: F811
    layout = submitted(tmp_path, "pjm")
    runs = study.run_layouts(layout)
    preprocess = [jobs_of(run)["preprocess"] for run in runs]
    assert preprocess[0].split("_")[0] == preprocess[1].split("_")[0]  # one bulk job
    for run, job in zip(runs, preprocess):
        run.mark_done("preprocess")
        pjm.set(job, "EXT")
    before = pjm.calls("pjstat")
    st = study.status(layout)
    assert pjm.calls("pjstat") <= before + 1  # none when no job is unfinished
    assert [run["submitted"] for run in st["runs"]] == [["train"], ["train"]]
    train = [jobs_of(run)["train"] for run in runs]
    assert train[0].split("_")[0] == train[1].split("_")[0] and pjm.job(train[0])["bulk"] == 2


def test_a_second_submit_of_a_study_under_other_variants_is_refused(tmp_path):
    layout = StudyLayout(tmp_path / "runs", "demo")
    layout.dir.mkdir(parents=True)
    layout.record.write_text(json.dumps({"study": "demo", "runs": {"other": "demo-other"}, "executor": "local"}))
    found = load_study(REPO / "jobs" / "demo_study.yaml", TINY)
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="already exists .* with the variants other"):
        study.submit(found, tmp_path / "runs", None, wait=False)


def test_concurrent_train_caps_the_variants_training_at_once(slurm, tmp_path):  # noqa: F811
    from pipeline.advance import advance_runs

    found = load_study(REPO / "jobs" / "demo_study.yaml", [*TINY, "site.executor=slurm"])
    from pipeline import runs

    layouts = [runs.write_inputs(spec, tmp_path / "runs", "slurm") for spec in found.runs.values()]
    reports = advance_runs(layouts, "slurm", train_at_once=1)
    assert [("train" in report["submitted"]) for report in reports.values()] == [True, False]
    reports = advance_runs(layouts, "slurm", train_at_once=1)  # the first still queued: the second waits
    assert all("train" not in report["submitted"] for report in reports.values())
