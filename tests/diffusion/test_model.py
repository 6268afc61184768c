"""The denoiser: self-conditioning's extra input, and where its LayerNorms sit."""


import pytest
import torch

from tests.helpers import small_batch, tiny_denoiser


def test_a_denoiser_without_self_conditioning_is_unchanged():
    plain = tiny_denoiser()
    assert plain.up_proj[0].in_features == 16 and tiny_denoiser(self_condition=True).up_proj[0].in_features == 32


def test_pre_norm_leaves_the_residual_stream_unnormalised_and_adds_one_final_norm():
    post, pre = tiny_denoiser(), tiny_denoiser(norm="pre")
    assert set(pre.state_dict()) - set(post.state_dict()) == {"final_norm.weight", "final_norm.bias"}
    assert set(post.state_dict()) <= set(pre.state_dict())
    h = 5 * torch.randn(3, 7, 32) + 2
    for model in (post, pre):  # branches that add nothing: what is left is where the norms sit
        layer = model.layers[0]
        with torch.no_grad():
            for linear in (layer.attn_out, layer.ffn_out):
                linear.weight.zero_(), linear.bias.zero_()
        out = layer(h)
        if model is pre:
            assert torch.equal(out, h)  # the residual stream passes through untouched
        else:
            torch.testing.assert_close(out, layer.ffn_norm(layer.attn_norm(h)))
            assert out.std(-1, correction=0).mean().item() == pytest.approx(1.0, abs=1e-3)
    ids, mask = small_batch()
    z, t = post.embed(ids), torch.full((6,), 10.0)
    pre.load_state_dict({**post.state_dict(), **{k: v for k, v in pre.state_dict().items() if k.startswith("final")}})
    assert not torch.allclose(post(z, t), pre(z, t))  # the same weights compute another function
