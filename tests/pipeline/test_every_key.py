"""Every key of a job spec is read by the code that runs a study, or refused: none is silently ignored.

A tiny study runs in this process (loading every shipped spec, preprocessing, training, sampling
with every noising mode, solver and rounding, evaluating, aggregating, each scheduler backend
building its jobs, status) while every config section records which of its keys are read. A read
counts where the project's own code makes it, outside the sections' check() methods (which check
values, they do not use them) and outside dataclasses' own copying (replace, asdict). The keys of
a section are whole paths: sample.steps is not train.steps. The five stages' resources share one
class and are read through it, by stage name (getattr(spec.resources, stage)).
"""

import dataclasses
import os
import sys

import pytest
import torch

from pipeline.spec import JobSpec, load_spec
from tests.helpers import REPO, decoding, integration

OURS = (str(REPO / "diffusion"), str(REPO / "pipeline"))
REFUSED = {"sample.use_ema": ("false", "not supported")}  # a value other than the default is refused
GPU_ONLY = {  # read where a GPU samples; the CPU path never reaches them
    "sample.weights": "diffusion/sample.py: bf16 weights or fp32 under autocast, on a GPU",
    "sample.gelu_epilogue": "diffusion/sample.py ready_for_sampling: the GELU in the matmul, bf16 on a GPU",
}


def sections(cls=JobSpec, prefix=""):
    """{dotted key: (section class, field)} of every leaf key."""
    keys = {}
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            keys.update(sections(type(default), f"{prefix}{field.name}."))
        else:
            keys[f"{prefix}{field.name}"] = (cls, field.name)
    return keys


@pytest.fixture
def reads(monkeypatch):
    found = set()
    for cls in {cls for cls, _ in sections().values()}:
        names = {f.name for f in dataclasses.fields(cls)}

        def recording(self, name, names=names):
            if name in names:
                caller = sys._getframe(1).f_code
                if caller.co_filename.startswith(OURS) and caller.co_name != "check":
                    found.add((type(self), name))
            return object.__getattribute__(self, name)

        monkeypatch.setattr(cls, "__getattribute__", recording)
    return found


TINY = ["train.steps=4", "train.save_every=2", "train.log_every=2", "diffusion.steps=20", "data.synthetic_pairs=200",
        "sample.seeds=[101,102]", "sample.max_examples=8", "evaluate.bertscore_model=null"]


@integration
def test_every_spec_key_is_read_by_the_code_that_runs_a_study(tmp_path, reads, monkeypatch):
    from diffusion import distributed
    from diffusion.sample import generate_seeds, ready_for_sampling
    from diffusion.checkpoint import load_exported
    from diffusion.lengths import load_table
    from diffusion.train import train as run_trainer
    from pipeline.advance import advance
    from pipeline.backends import NAMES, backend
    from pipeline.layout import STAGES, RunLayout
    from pipeline.plan import tasks
    from pipeline.preflight import check_data
    from pipeline.prefetch import prefetch
    from pipeline.spec import freeze
    from pipeline.stages import run_task, write_run_inputs
    from pipeline.status import run_status

    from pipeline.study_spec import is_study_file, load_study

    for path in sorted([*(REPO / "jobs").glob("*.yaml"), *(REPO / "jobs/studies").glob("*.yaml")]):
        if is_study_file(path):
            load_study(path)
        else:
            load_spec(path, ["name=every-key"])  # bases have no name of their own
    # a decoding of its own: the decodings' keys are read too
    spec = load_spec(REPO / "jobs/demo_target.yaml", [*TINY, "name=decoded",
                                                      "decodings={ddim-5: {sample.solver: ddim, sample.steps: 5}}"])
    layout = RunLayout(tmp_path / "runs", spec.name)
    check_data(spec)
    prefetch(spec, layout.root)
    backend("local").check_resources(spec)
    write_run_inputs(layout, spec, freeze(spec))
    assert run_task(str(layout.dir), "preprocess") == "done"
    environment = dict(os.environ)  # a world of one sets RANK, MASTER_PORT...: no later process may inherit them
    try:  # the trainer in this process, so that its reads are seen; the train stage then finds it done
        run_trainer(spec.library_config(), layout.dir, layout.data, force_cpu=True)
    finally:
        distributed.teardown()
        os.environ.clear()
        os.environ.update(environment)
    for task in tasks(spec)[1:]:
        assert run_task(str(layout.dir), task.stage, task.step, task.decoding) == "done", task.name
    run_status(layout, advance(layout, submit=False))
    # a submit as typed, from a folder of its own (the site's results root, the run's name), then cancelled
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", str(REPO / "jobs/demo_target.yaml"), *(a for s in TINY for a in ("--set", s))]) == 0
    assert cli.main(["cancel", "demo-target", "--root", str(tmp_path / "runs")]) == 0

    # every noising mode, solver and rounding reads what it reads
    cfg, denoiser, tokenizer = load_exported(layout.checkpoint(4), "cpu")
    pairs = [{"src": "how do i learn python ?", "trg": "how can i learn python ?"}] * 2
    for keys in ({"noising": "full", "source_noise": 0.5, "solver": "ddim", "eta": 0.5, "rounding": "soft",
                  "soft_temperature": 0.7}, {"noising": "full", "full_mode": "joint", "solver": "dpm++2m",
                                             "rounding": "logits", "pad_penalty": 1.0, "min_target_tokens": 1,
                                             "target_length": "predicted", "length_offsets": [0, 1]}):
        decode = decoding(steps=3, **keys)
        run_cfg = dataclasses.replace(cfg, diffusion=decode.diffusion)
        generate_seeds(ready_for_sampling(denoiser, decode.sample, torch.device("cpu")), run_cfg, tokenizer, pairs,
                       [1], decode.sample, torch.device("cpu"), length_table=load_table(layout.checkpoint(4)))

    # each scheduler backend builds each stage's jobs from the site and the resources
    monkeypatch.setenv("PATH", f"{REPO / 'tests/pipeline/fake_slurm'}:{REPO / 'tests/pipeline/pjm_standins'}:"
                               f"{os.environ['PATH']}")
    site = load_spec(REPO / "jobs/demo_target.yaml", TINY, site="wisteria-aquarius").site
    gpus = load_spec(REPO / "jobs/qqp_target.yaml").resources  # a stage on GPUs takes the site's GPU partition
    for name in NAMES:
        for stage in STAGES:
            res = getattr(gpus if stage == "train" else spec.resources, stage)
            executor = backend(name).make_executor(tmp_path / name, site, res, f"x-{stage}")
            if backend(name).jobs_can_wait:
                backend(name).wait_for(executor, ["1"])
            backend(name).has_room(getattr(spec.resources, stage), [spec.resources.train])

    read_keys = {key for key, where in sections().items() if where in reads}
    unread = sorted(set(sections()) - read_keys - set(REFUSED) - set(GPU_ONLY))
    assert unread == [], f"keys nothing reads: {unread}"


@pytest.mark.parametrize("key, value, message", [(key, *refusal) for key, refusal in REFUSED.items()])
def test_keys_read_by_nothing_are_refused(key, value, message):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/demo_target.yaml", [f"{key}={value}"])


def test_the_allowed_exceptions_are_still_keys():
    assert set(REFUSED) | set(GPU_ONLY) <= set(sections())
