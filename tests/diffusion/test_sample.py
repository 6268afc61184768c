"""diffusion.sample's choices for the card: sample.attention pins the attention backend there."""

import pytest
import torch
import torch.nn.functional as F

from diffusion.config import ConfigError
from diffusion.sample import attention_kernel


def test_a_pinned_attention_backend_that_cannot_run_is_one_config_error_naming_the_key():
    """The backend is pinned for a GPU; the CPU here has no cuDNN attention, so the call inside
    fails as an unsupported backend would on a card."""
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ConfigError, match="cudnn cannot run these batches on this device") as info:
        with attention_kernel("cudnn", torch.device("cuda")):
            F.scaled_dot_product_attention(q, q, q)
    assert info.value.key == "sample.attention"


def test_the_cpu_keeps_pytorchs_choice_and_other_errors_pass_through():
    q = torch.randn(1, 2, 8, 16)
    with attention_kernel("cudnn", torch.device("cpu")):
        F.scaled_dot_product_attention(q, q, q)  # no backend pinned on a CPU
    with pytest.raises(RuntimeError, match="not an attention failure"):
        with attention_kernel("efficient", torch.device("cuda")):
            raise RuntimeError("not an attention failure")
