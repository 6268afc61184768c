"""Every key of a job spec is read by some code or refused: none is silently ignored."""

import dataclasses
import re

import pytest

from helpers import REPO
from pipeline.spec import JobSpec, load_spec


def spec_keys(cls, prefix=""):
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            yield from spec_keys(type(default), f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def code_reading_keys() -> str:
    """The library's and the pipeline's code, less the dataclass fields that declare the keys and
    the sections' `check()` methods (which check values, they do not use them)."""
    text = []
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "diffusion").rglob("*.py")]):
        source = path.read_text()
        source = re.sub(r"\n    def check\(self\).*?(?=\n    def |\n\S|\Z)", "\n", source, flags=re.S)
        source = re.sub(r"^    \w+: [^=\n]+= .*$", "", source, flags=re.M)  # field declarations
        text.append(source)
    return "\n".join(text)


REFUSED = {"sample.use_ema": ("false", "not supported")}  # a value other than the default is refused


def test_every_spec_key_is_read_by_some_code():
    """By the key's own name (`.python`, `"python"`): it finds a key no code names at all."""
    code = code_reading_keys()
    unread = [key for key in spec_keys(JobSpec)
              if not re.search(r"\.%s\b|[\"']%s[\"']" % ((key.rsplit(".", 1)[-1],) * 2), code)]
    assert unread == list(REFUSED)


@pytest.mark.parametrize("key, value, message", [(key, *refusal) for key, refusal in REFUSED.items()])
def test_keys_read_by_nothing_are_refused(key, value, message):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError, match=f"{key}: .*{message}"):
        load_spec(REPO / "jobs/demo_target.yaml", [f"{key}={value}"])
