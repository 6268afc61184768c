"""Job specs: every bad input gets an error naming file, line and key; bases, sites, overrides."""

import dataclasses
import json
from pathlib import Path

import pytest

from diffusion.config import ModelConfig, to_dict
from diffusion.manifest import checkpoint_steps
from pipeline.sites import SHIPPED
from pipeline.plan import Task
from pipeline.spec import SpecError, freeze, load_frozen, load_spec
from tests.helpers import REPO

JOBS = REPO / "jobs"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, overrides=(), site=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides, site)
    return info.value


GOOD = "name: t\ndata: {synthetic_pairs: 100}\ntrain: {steps: 10, save_every: 5, batch_size: 4, micro_batch_size: 2}\n"


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = write(tmp_path, "s.yaml", GOOD + "model:\n  layers: 3\n")
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 5, "model.layers")
    assert "valid keys here: vocab_size, embed_dim" in str(err) and f"{path}:5: model.layers: unknown key" in str(err)
    err = error_of(write(tmp_path, "top.yaml", GOOD + "trian: {}\n"))
    assert (err.line, err.key) == (4, "trian") and "valid keys here: name, site, data" in str(err)


def test_wrong_type_and_bad_choice_are_located(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD.replace("steps: 10", "steps: ten")))
    assert err.line == 3 and err.key == "train.steps" and "integer" in str(err)
    err = error_of(write(tmp_path, "b.yaml", GOOD + "diffusion: {noising: half}\n"))
    assert err.line == 4 and err.key == "diffusion.noising" and "'target', 'full'" in str(err)
    err = error_of(write(tmp_path, "c.yaml", GOOD + "sample:\n  seeds: [1, x]\n"))
    assert (err.line, err.key) == (5, "sample.seeds[1]")  # a list item: the line of its key
    err = error_of(write(tmp_path, "d.yaml", GOOD + "model: 3\n"))
    assert (err.line, err.key) == (4, "model") and "mapping" in str(err)


def test_missing_name_and_bad_run_names(tmp_path):
    path = write(tmp_path, "a.yaml", GOOD.replace("name: t\n", ""))
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 1, "name") and "missing" in str(err)
    for bad in ("a/b", "../up", "x..y", ".hidden", "a b"):
        err = error_of(write(tmp_path, "b.yaml", GOOD.replace("name: t", f"name: '{bad}'")))
        assert err.key == "name" and err.line == 1 and "invalid run name" in str(err)


def test_yaml_problems_are_located(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD + "model:\n  num_layers: 2\n  num_layers: 3\n"))
    assert (err.line, err.key) == (6, "model.num_layers") and "first written on line 5" in str(err)
    err = error_of(write(tmp_path, "b.yaml", GOOD + "model: {num_layers: [\n"))
    assert err.file == str(tmp_path / "b.yaml") and err.line and "not valid YAML" in str(err)
    err = error_of(write(tmp_path, "c.yaml", "- name: t\n"))
    assert err.line == 1 and "mapping" in str(err)
    err = error_of(write(tmp_path, "d.yaml", GOOD + "1: x\n"))
    assert err.line == 4 and "keys must be names" in str(err)


def test_cross_field_checks(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD.replace("batch_size: 4", "batch_size: 5")))
    assert (err.key, err.line) == ("train.batch_size", 3) and "multiple" in str(err)
    err = error_of(write(tmp_path, "a0.yaml", GOOD.replace("micro_batch_size: 2", "micro_batch_size: 0")))
    assert err.key == "train.micro_batch_size"  # not a ZeroDivisionError
    err = error_of(write(tmp_path, "b.yaml", "name: t\n"))
    assert err.key == "data" and "synthetic_pairs" in str(err)
    err = error_of(write(tmp_path, "c.yaml", GOOD.replace("save_every: 5", "save_every: 11")))
    assert err.key == "train.save_every" and "between 1 and train.steps (10)" in str(err)
    err = error_of(write(tmp_path, "d.yaml", GOOD + "site: {executor: lsf}\n"))
    assert (err.key, err.line) == ("site.executor", 4)
    err = error_of(write(tmp_path, "e.yaml", GOOD + "evaluate: {split: train}\n"))
    assert (err.key, err.line) == ("evaluate.split", 4)
    err = error_of(write(tmp_path, "f.yaml", GOOD.replace("100}", "100, seq_len: 256}")))
    assert (err.key, err.line) == ("data.seq_len", 2) and "max_positions" in str(err)
    err = error_of(write(tmp_path, "g.yaml", GOOD + "model: {hidden_size: 100, num_heads: 12}\n"))
    assert err.key == "model.num_heads"
    err = error_of(write(tmp_path, "h.yaml", GOOD + "resources:\n  train: {cpus: 0}\n"))
    assert (err.key, err.line) == ("resources.train.cpus", 5)
    # local files must include the split that is evaluated
    err = error_of(write(tmp_path, "i.yaml", GOOD.replace("synthetic_pairs: 100", "train: x.jsonl")))
    assert err.key == "data.valid" and err.line == 2


def test_overrides_take_precedence_and_bad_ones_are_named(tmp_path):
    path = write(tmp_path, "s.yaml", GOOD)
    spec = load_spec(path, ["train.steps=20", "sample.seeds=[1, 2]", "evaluate.bertscore_model=null", "train.lr=1e-4"])
    assert spec.train.steps == 20 and spec.sample.seeds == (1, 2) and spec.evaluate.bertscore_model is None
    assert spec.train.lr == 1e-4  # an exponent without a dot is a number, not YAML 1.1's string
    err = error_of(path, ["train.stpes=3"])
    assert (err.file, err.line, err.key) == ("--set", None, "train.stpes")
    assert str(err).startswith("--set: train.stpes: unknown key; valid keys here: steps, batch_size")
    assert "KEY=VALUE" in str(error_of(path, ["train.steps"]))
    err = error_of(path, ["train.steps=x"])
    assert (err.file, err.key) == ("--set", "train.steps") and "integer" in str(err)
    assert "not a section" in str(error_of(path, ["train.steps.x=1"]))
    assert "--site" in str(error_of(path, ["site=slurm-generic"]))
    # a mapping value merges into the section; later --set wins over earlier ones
    spec = load_spec(path, ["train={lr: 0.5}", "train.lr=0.25"])
    assert (spec.train.lr, spec.train.steps) == (0.25, 10)
    # an override fixes a bad value in the file
    bad = write(tmp_path, "bad.yaml", GOOD.replace("batch_size: 4", "batch_size: 5"))
    assert load_spec(bad, ["train.batch_size=6"]).train.batch_size == 6


def test_base_files_merge_and_cycles_are_refused(tmp_path):
    write(tmp_path, "base.yaml", GOOD + "model: {num_layers: 3, hidden_size: 96}\nsample: {seeds: [1, 2, 3]}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: c\nmodel: {num_layers: 5}\nsample: {seeds: [7]}\n")
    spec = load_spec(child)
    assert (spec.name, spec.model.num_layers, spec.model.hidden_size, spec.train.steps) == ("c", 5, 96, 10)
    assert spec.sample.seeds == (7,)  # lists replace
    # chains, and --set over all of them
    (tmp_path / "sub").mkdir()
    grandchild = write(tmp_path, "sub/gc.yaml", "base: ../child.yaml\nmodel: {hidden_size: 48}\n")
    spec = load_spec(grandchild, ["model.num_layers=7"])
    assert (spec.name, spec.model.num_layers, spec.model.hidden_size) == ("c", 7, 48)
    # cycles, located at the `base:` that closes them
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    y = write(tmp_path, "y.yaml", "name: y\nbase: x.yaml\n")
    err = error_of(tmp_path / "x.yaml")
    assert "include each other" in str(err) and (err.file, err.line, err.key) == (str(y), 2, "base")
    assert "include each other" in str(error_of(write(tmp_path, "self.yaml", "base: self.yaml\n")))
    err = error_of(write(tmp_path, "nob.yaml", "name: n\nbase: nowhere.yaml\n"))
    assert (err.line, err.key) == (2, "base") and "no such file" in str(err)
    # an error in the base file names the base file; one in the child, the child
    write(tmp_path, "bad_base.yaml", GOOD + "train2: {}\n")
    err = error_of(write(tmp_path, "c2.yaml", "base: bad_base.yaml\n"))
    assert (err.file, err.line, err.key) == (str(tmp_path / "bad_base.yaml"), 4, "train2")
    err = error_of(write(tmp_path, "c3.yaml", "base: base.yaml\nname: c\n\ntrain: {batch_size: 3}\n"))
    assert (err.file, err.line, err.key) == (str(tmp_path / "c3.yaml"), 4, "train.batch_size")


def test_site_profiles_merge_under_the_spec(tmp_path):
    spec = load_spec(JOBS / "qqp_full.yaml", site="wisteria-aquarius")
    assert spec.site.name == "wisteria-aquarius" and spec.site.executor == "pjm" and spec.site.account == "gz00"
    assert spec.resources.train.partition == "share" and spec.resources.sample.partition == "share"  # site defaults
    assert spec.resources.train.cpus == 16  # the job spec wins over the site's default
    assert "$" not in spec.site.results_root  # $USER expanded at submit
    # --set wins over both
    spec = load_spec(JOBS / "qqp_full.yaml", ["resources.train.partition=regular-a", "site.account=gx11"],
                     site="wisteria-aquarius")
    assert (spec.resources.train.partition, spec.site.account) == ("regular-a", "gx11")
    # the spec's `site:` names the profile; --site overrides it; neither: local
    path = write(tmp_path, "s.yaml", GOOD + "site: slurm-generic\n")
    assert load_spec(path).site.executor == "slurm"
    assert load_spec(path, site="local").site.executor == "local"
    assert load_spec(write(tmp_path, "l.yaml", GOOD)).site == load_spec(path, site="local").site
    # an inline mapping, with its own defaults
    spec = load_spec(write(tmp_path, "i.yaml", GOOD + "site:\n  executor: slurm\n  defaults: {evaluate: {label: X}}\n"))
    assert (spec.site.executor, spec.evaluate.label) == ("slurm", "X")


def test_unknown_site_and_bad_site_files(tmp_path, monkeypatch):
    err = error_of(JOBS / "qqp_full.yaml", site="nowhere")
    assert (err.file, err.key) == ("--site", "site") and "available: local, slurm-generic, wisteria-aquarius" in str(err)
    path = write(tmp_path, "s.yaml", GOOD + "site: nowhere\n")
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 4, "site") and "unknown site 'nowhere'" in str(err)
    assert error_of(write(tmp_path, "t.yaml", GOOD + "site: ../jobs/x\n")).key == "site"
    # errors inside a site file name that file and line
    sites = tmp_path / "sites"
    sites.mkdir()
    monkeypatch.setenv("PIPELINE_SITES", str(sites))
    write(sites, "typo.yaml", "executor: slurm\ndefaults:\n  resources:\n    train: {gpu: 4}\n")
    err = error_of(write(tmp_path, "u.yaml", GOOD + "site: typo\n"))
    assert (err.file, err.line, err.key) == (str(sites / "typo.yaml"), 4, "resources.train.gpu")
    write(sites, "named.yaml", "executor: slurm\ndefaults: {name: x}\n")
    err = error_of(write(tmp_path, "v.yaml", GOOD + "site: named\n"))
    assert (err.line, err.key) == (2, "defaults.name")
    write(sites, "var.yaml", "results_root: /x/$NO_SUCH_VARIABLE_HERE/runs\n")
    err = error_of(write(tmp_path, "w.yaml", GOOD + "site: var\n"))
    assert (err.line, err.key) == (1, "site.results_root") and "NO_SUCH_VARIABLE_HERE" in str(err)


def test_a_users_own_profile_wins_over_the_shipped_one_of_its_name(tmp_path, monkeypatch):
    own = tmp_path / "config" / "textdiffusion-pipeline" / "sites"
    own.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert load_spec(write(tmp_path, "a.yaml", GOOD), site="slurm-generic").site.executor == "slurm"  # shipped
    write(own, "slurm-generic.yaml", "executor: slurm\naccount: mine\n")
    write(own, "mycluster.yaml", "executor: pjm\n")
    assert load_spec(write(tmp_path, "b.yaml", GOOD), site="slurm-generic").site.account == "mine"
    assert load_spec(write(tmp_path, "c.yaml", GOOD + "site: mycluster\n")).site.executor == "pjm"
    first = tmp_path / "first"
    first.mkdir()
    write(first, "mycluster.yaml", "executor: slurm\n")
    monkeypatch.setenv("PIPELINE_SITES", str(first))  # before the per-user folder
    assert load_spec(write(tmp_path, "d.yaml", GOOD + "site: mycluster\n")).site.executor == "slurm"


def test_relative_data_paths_are_resolved_against_the_file_that_names_them(tmp_path, monkeypatch):
    spec = load_spec(JOBS / "qqp_target.yaml")
    assert Path(spec.data.train) == (REPO.parent / "shared" / "data" / "qqp" / "train.jsonl").resolve()
    assert Path(spec.data.valid).is_absolute() and spec.data.test is None
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    write(tmp_path, "b/base.yaml", GOOD.replace("synthetic_pairs: 100", "train: tr.jsonl, valid: /abs/va.jsonl"))
    child = write(tmp_path, "c/child.yaml", "base: ../b/base.yaml\ndata: {test: ../te.jsonl}\n")
    monkeypatch.chdir(tmp_path / "c")
    spec = load_spec(Path("child.yaml"), ["data.valid=va.jsonl"])
    assert spec.data.train == str((tmp_path / "b" / "tr.jsonl").resolve())  # the base's folder
    assert spec.data.test == str((tmp_path / "te.jsonl").resolve())  # the child's folder
    assert spec.data.valid == str((tmp_path / "c" / "va.jsonl").resolve())  # --set: the working folder
    monkeypatch.setenv("SPEC_TEST_DATA", str(tmp_path / "env"))
    spec = load_spec(child, ["data.valid=$SPEC_TEST_DATA/va.jsonl"])
    assert spec.data.valid == str((tmp_path / "env" / "va.jsonl").resolve())


def test_errors_in_relative_file_names_keep_the_name_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    write(tmp_path, "jobs/x.yaml", GOOD + "model:\n  layrs: 3\n")
    err = error_of(Path("jobs/x.yaml"))
    assert str(err).startswith("jobs/x.yaml:5: model.layrs: unknown key; valid keys here: vocab_size, embed_dim")


def test_frozen_spec_round_trips(tmp_path):
    spec = load_spec(JOBS / "qqp_full.yaml", ["train.steps=30000", "train.lr=1e-4", "sample.seeds=[3, 1]"])
    path = write(tmp_path, "frozen.yaml", freeze(spec))
    assert load_frozen(path) == spec and freeze(load_frozen(path)) == freeze(spec)
    # strings that look like numbers, null or booleans stay strings
    odd = dataclasses.replace(spec, name="1e5", evaluate=dataclasses.replace(spec.evaluate, label="null"),
                              site=dataclasses.replace(spec.site, account="yes", modules=("1.0e4", "on")))
    assert load_frozen(write(tmp_path, "odd.yaml", freeze(odd))) == odd
    # strict: no base, no unknown keys; errors located in the frozen file
    err = pytest.raises(SpecError, load_frozen, write(tmp_path, "b.yaml", "base: x.yaml\n" + freeze(spec))).value
    assert (err.line, err.key) == (1, "base")


def job_files():
    """The job specs (study files: test_study_runs.py runs every one)."""
    from pipeline.study_spec import is_study_file

    return sorted(path for path in JOBS.glob("*.yaml") if not is_study_file(path))


def is_base(path: Path) -> bool:
    return any(f"base: {path.name}" in other.read_text() for other in job_files())


@pytest.mark.parametrize("path", job_files(), ids=lambda p: p.name)
def test_every_shipped_job_loads(path):
    spec = load_spec(path, ["name=probe"] if is_base(path) else [], site="local")
    assert spec.site.executor == "local"
    if is_base(path):  # a base names no run: only its children are submitted
        assert error_of(path, site="local").key == "name"


def test_checkpoint_steps_are_every_save_every_and_the_last_step(tmp_path):
    assert checkpoint_steps(10, 5) == [5, 10]
    assert checkpoint_steps(10, 3) == [3, 6, 9, 10]  # the last step is not a multiple: it still gets one
    assert checkpoint_steps(7, 7) == [7]
    spec = load_spec(write(tmp_path, "c.yaml", GOOD), ["train.save_every=4"])
    assert spec.checkpoint_steps() == checkpoint_steps(10, 4) == [4, 8, 10]


def test_evaluate_bertscore_batch_size_reaches_the_scorer(tmp_path, monkeypatch):
    import diffusion.metrics
    from pipeline import stages
    from pipeline.layout import RunLayout

    spec = load_spec(JOBS / "demo_target.yaml", ["evaluate.bertscore_model=some-org/tiny",
                                                 "evaluate.bertscore_batch_size=7"])
    layout = RunLayout(tmp_path, spec.name)
    row = json.dumps({"src": "a b", "ref": "a c", "hyp": "a b"}) + "\n"
    layout.samples(10).mkdir(parents=True)
    for name in ["samples.jsonl"] + [f"samples.seed{seed}.jsonl" for seed in spec.sample.seeds]:
        write(layout.samples(10), name, row)
    calls = []
    monkeypatch.setattr(diffusion.metrics, "bertscore",
                        lambda hyps, refs, model, batch_size: calls.append((model, batch_size)) or 0.5)
    monkeypatch.setattr(stages, "checkpoint_diagnostics", lambda layout, spec, step: {})  # no checkpoint here
    stages.evaluate(layout, spec, Task("evaluate", 10), print)
    assert calls and set(calls) == {("some-org/tiny", 7)}


@pytest.mark.parametrize("site", sorted(p.stem for p in SHIPPED.glob("*.yaml")))
def test_every_site_profile_loads(site):
    assert load_spec(JOBS / "demo_target.yaml", site=site).site.name == site


def test_shipped_specs_differ_only_in_mode():
    target, full = load_spec(JOBS / "qqp_target.yaml"), load_spec(JOBS / "qqp_full.yaml")
    assert (target.diffusion.noising, full.diffusion.noising) == ("target", "full")
    assert (target.evaluate.label, full.evaluate.label) == ("DiffuSeq", "Full-Noised")
    t, f = to_dict(target), to_dict(full)
    for d in (t, f):
        del d["name"], d["diffusion"]["noising"], d["evaluate"]["label"], d["sample"]["full_mode"]
    assert t == f
    assert full.checkpoint_steps() == [10000, 20000, 30000, 40000, 50000]
    assert (full.train.batch_size, full.train.micro_batch_size, full.train.lr, full.train.ema_rate) == (2048, 512, 1e-4, 0.9999)
    assert (full.model.num_layers, full.model.embed_dim, full.data.seq_len) == (12, 128, 128)
    assert (full.diffusion.steps, full.diffusion.schedule, full.train.zero_stage) == (2000, "sqrt", 2)
    assert full.resources.train.gpus == 4 and full.sample.full_mode == "conditional"
    demo_t, demo_f = load_spec(JOBS / "demo_target.yaml"), load_spec(JOBS / "demo_full.yaml")
    assert (demo_t.name, demo_f.name) == ("demo-target", "demo-full")
    assert demo_t.data.synthetic_pairs and demo_t.resources.train.gpus == 0
    t, f = to_dict(demo_t), to_dict(demo_f)
    for d in (t, f):
        del d["name"], d["diffusion"]["noising"], d["evaluate"]["label"], d["sample"]["full_mode"]
    assert t == f


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
    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/qqp_fast_target.yaml", [f"{key}={value}"])


def test_min_target_tokens_with_soft_rounding_is_refused_by_name():
    with pytest.raises(SpecError, match="sample.min_target_tokens: needs a rounding that picks tokens"):
        load_spec(REPO / "jobs/qqp_fast_target.yaml", ["sample.min_target_tokens=1", "sample.rounding=soft"])


def test_source_noise_with_joint_sampling_is_refused_by_name():
    with pytest.raises(SpecError, match="diffusion.source_noise: 0.5 needs sample.full_mode conditional"):
        load_spec(REPO / "jobs/qqp_fast_full.yaml", ["diffusion.source_noise=0.5", "sample.full_mode=joint"])
    assert load_spec(REPO / "jobs/qqp_fast_full.yaml", ["diffusion.source_noise=0.5"]).diffusion.source_noise == 0.5


def test_the_report_recipe_keeps_every_budget_key_at_its_default():
    from diffusion.config import DiffusionConfig, SampleConfig, TrainConfig

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


@pytest.mark.parametrize("sets, key, message", [
    (["sample.solver=euler"], "sample.solver", "must be one of"),
    (["sample.solver=dpm++2m", "sample.steps=1"], "sample.steps", "at least 2 steps"),
    (["sample.eta=0.5"], "sample.eta", "ddim solver only"),
    (["sample.solver=ddim", "sample.eta=1.5"], "sample.eta", r"in \[0, 1\]"),
])
def test_solver_keys_are_validated_with_named_errors(sets, key, message):
    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/qqp_target.yaml", sets)


def test_width_mask_without_trimming_is_refused_by_name():
    with pytest.raises(SpecError, match="model.width_mask: needs data.trim"):
        load_spec(REPO / "jobs/qqp_fast_target.yaml", ["model.width_mask=true", "data.trim=false"])
    assert load_spec(REPO / "jobs/qqp_fast_target.yaml", ["model.width_mask=true"]).model.width_mask
