"""Job specs: every bad input gets an error naming file, line and key; bases, sites, overrides."""

from pathlib import Path

import pytest

from pipeline.spec import REPO, SpecError, freeze, load_frozen, load_spec

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
    assert "valid keys here: vocab_size, embed_dim" in str(err) and f"{path}:5" in str(err)


def test_wrong_type_and_bad_choice_are_located(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD.replace("steps: 10", "steps: ten")))
    assert err.line == 3 and err.key == "train.steps" and "integer" in str(err)
    err = error_of(write(tmp_path, "b.yaml", GOOD + "diffusion: {noising: half}\n"))
    assert err.line == 4 and err.key == "diffusion.noising" and "'target', 'full'" in str(err)


def test_missing_name_and_bad_run_names(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD.replace("name: t\n", "")))
    assert err.key == "name" and "missing" in str(err)
    for bad in ("a/b", "../up", "x..y"):
        err = error_of(write(tmp_path, "b.yaml", GOOD.replace("name: t", f"name: '{bad}'")))
        assert err.key == "name" and err.line == 1


def test_cross_field_checks(tmp_path):
    err = error_of(write(tmp_path, "a.yaml", GOOD.replace("batch_size: 4", "batch_size: 5")))
    assert err.key == "train.batch_size" and "multiple" in str(err)
    err = error_of(write(tmp_path, "b.yaml", "name: t\n"))
    assert err.key == "data" and "synthetic_pairs" in str(err)


def test_overrides_take_precedence_and_bad_ones_are_named(tmp_path):
    path = write(tmp_path, "s.yaml", GOOD)
    spec = load_spec(path, ["train.steps=20", "sample.seeds=[1, 2]", "evaluate.bertscore_model=null"])
    assert spec.train.steps == 20 and spec.sample.seeds == (1, 2) and spec.evaluate.bertscore_model is None
    err = error_of(path, ["train.stpes=3"])
    assert err.file == "--set" and err.key == "train.stpes" and "valid keys here: steps" in str(err)
    assert "KEY=VALUE" in str(error_of(path, ["train.steps"]))
    assert error_of(path, ["train.steps=x"]).key == "train.steps"


def test_base_files_merge_and_cycles_are_refused(tmp_path):
    write(tmp_path, "base.yaml", GOOD + "model: {num_layers: 3, hidden_size: 96}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: c\nmodel: {num_layers: 5}\n")
    spec = load_spec(child)
    assert (spec.name, spec.model.num_layers, spec.model.hidden_size, spec.train.steps) == ("c", 5, 96, 10)
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    write(tmp_path, "y.yaml", "base: x.yaml\n")
    assert "include each other" in str(error_of(tmp_path / "x.yaml"))
    # an error in the base file names the base file
    write(tmp_path, "bad_base.yaml", GOOD + "train2: {}\n")
    err = error_of(write(tmp_path, "c2.yaml", "base: bad_base.yaml\n"))
    assert err.file == str(tmp_path / "bad_base.yaml") and err.key == "train2"


def test_site_profiles_merge_under_the_spec(tmp_path):
    spec = load_spec(JOBS / "qqp_full.yaml", site="wisteria-aquarius")
    assert spec.site.executor == "pjm" and spec.site.account == "gz00"
    assert spec.resources.train.partition == "regular-a"  # from the site's defaults
    assert spec.resources.train.cpus == 16  # the job spec wins over the site's default
    assert "available: local" in str(error_of(JOBS / "qqp_full.yaml", site="nowhere"))


def test_relative_data_paths_are_resolved_against_the_file_that_names_them():
    spec = load_spec(JOBS / "qqp_target.yaml")
    assert Path(spec.data.train) == (REPO.parent / "shared" / "data" / "qqp" / "train.jsonl").resolve()


def test_frozen_spec_round_trips(tmp_path):
    spec = load_spec(JOBS / "qqp_full.yaml", ["train.steps=30000"])
    path = write(tmp_path, "frozen.yaml", freeze(spec))
    assert load_frozen(path) == spec


def test_shipped_specs_load_and_differ_only_in_mode():
    target, full = load_spec(JOBS / "qqp_target.yaml"), load_spec(JOBS / "qqp_full.yaml")
    assert (target.diffusion.noising, full.diffusion.noising) == ("target", "full")
    assert target.model == full.model and target.train == full.train and target.data == full.data
    assert full.checkpoint_steps() == [10000, 20000, 30000, 40000, 50000]
    assert full.train.batch_size == 2048 and full.resources.train.gpus == 4 and full.diffusion.steps == 2000
    for name in ("demo_target", "demo_full"):
        demo = load_spec(JOBS / f"{name}.yaml")
        assert demo.data.synthetic_pairs and demo.resources.train.gpus == 0
