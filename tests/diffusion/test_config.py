"""The config rules are the library's: `python -m diffusion.train` refuses what `pipeline submit` refuses."""

import subprocess
import sys

import pytest
import yaml

from diffusion.config import Config, ConfigError, DataConfig, checked, from_dict, load_config
from tests.helpers import REPO, integration

GOOD = {"data": {"synthetic_pairs": 100, "seq_len": 32}, "model": {"max_positions": 32},
        "train": {"steps": 10, "save_every": 5, "batch_size": 4, "micro_batch_size": 2}}


@pytest.mark.parametrize("section, values, key, words", [
    ("sample", {"eta": 0.5}, "sample.eta", "ddim solver only"),
    ("train", {"batch_size": 5}, "train.batch_size", "not a multiple"),
    ("data", {"seq_len": 6}, "data.seq_len", "at least 7"),
    ("diffusion", {"source_noise": 0.5}, "diffusion.source_noise", "full noising only"),
    ("diffusion", {"absorb_rate": 1.5}, "diffusion.absorb_rate", r"in \[0, 1\]"),
    ("model", {"width_mask": True}, "model.width_mask", "needs data.trim"),  # a rule between sections
])
def test_a_section_checks_its_values_and_config_the_rules_between_them(tmp_path, section, values, key, words):
    from pipeline.spec import SpecError, load_spec

    data = {**GOOD, section: {**GOOD.get(section, {}), **values}}
    with pytest.raises(ConfigError, match=words) as info:
        from_dict(Config, data)
    assert info.value.key == key
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=words):
        load_config(path)  # what `python -m diffusion.train CONFIG` reads
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", **data}))
    with pytest.raises(SpecError, match=f"{key}: .*{words}"):  # the same rule, with file and line
        load_spec(spec)


def test_flash_attention_is_refused_for_a_width_masked_model():
    data = {**GOOD, "data": {**GOOD["data"], "trim": True}, "model": {**GOOD["model"], "width_mask": True},
            "sample": {"attention": "flash"}}
    with pytest.raises(ConfigError, match="flash attention takes no mask") as info:
        from_dict(Config, data)
    assert info.value.key == "sample.attention"
    from_dict(Config, {**data, "sample": {"attention": "efficient"}})


def test_a_section_left_out_is_checked_with_its_defaults():
    with pytest.raises(ConfigError, match="name a source") as info:
        from_dict(Config, {})
    assert info.value.key == "data"
    with pytest.raises(ConfigError, match="data.vocab_size: must be at least 1"):
        checked(DataConfig(synthetic_pairs=10, vocab_size=0), "data")


@integration
def test_the_trainer_refuses_a_config_the_pipeline_would_refuse(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "sample": {"eta": 0.5}}))
    proc = subprocess.run([sys.executable, "-m", "diffusion.train", str(path), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "sample.eta: is read by the ddim solver only" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
