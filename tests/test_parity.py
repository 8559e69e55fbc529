"""vmae's VideoMAE against transformers' (the reference), on random weights over several tiny configs."""

from __future__ import annotations

import pytest
import torch
import transformers

from vmae_cli import VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel
from vmae_cli.models.masking import tube_mask

from .models import build, tiny_config

LABELS = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}
CONFIGS = {
    "mean-pool": dict(use_mean_pooling=True),
    "token0-no-normpix": dict(use_mean_pooling=False, norm_pix_loss=False),
    "non-square-tubelet1": dict(image_size=[32, 48], tubelet_size=1, num_frames=3, use_mean_pooling=True),
    "odd-widths-no-qv-bias": dict(
        hidden_size=48,
        num_attention_heads=3,
        intermediate_size=80,
        decoder_hidden_size=36,
        decoder_num_attention_heads=6,
        decoder_intermediate_size=50,
        qkv_bias=False,
        use_mean_pooling=False,
    ),
    "patch4-6frames": dict(
        image_size=16,
        patch_size=4,
        num_frames=6,
        hidden_size=40,
        num_attention_heads=5,
        intermediate_size=96,
        decoder_num_hidden_layers=2,
        num_hidden_layers=3,
        layer_norm_eps=1e-6,
        use_mean_pooling=True,
    ),
}
PAIRS = {
    "encoder": (VideoMAEModel, transformers.VideoMAEModel),
    "pretraining": (VideoMAEForPreTraining, transformers.VideoMAEForPreTraining),
    "classifier": (VideoMAEForVideoClassification, transformers.VideoMAEForVideoClassification),
}


def _inputs(config, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = config.image_hw
    x = torch.randn(batch, config.num_frames, config.num_channels, h, w, generator=g)
    mask = tube_mask(config, batch, mask_ratio=0.75, generator=g)
    return x, mask


def _compare(ours, theirs, kind, x, mask):
    with torch.no_grad():
        if kind == "pretraining":
            a = ours(x, mask, output_hidden_states=True)
            b = theirs(x, bool_masked_pos=mask, output_hidden_states=True)
        elif kind == "encoder":
            a = ours(x, output_hidden_states=True)
            b = theirs(x, output_hidden_states=True)
        else:
            labels = torch.tensor([1, 3])
            a = ours(x, labels=labels, output_hidden_states=True)
            b = theirs(x, labels=labels, output_hidden_states=True)
    if kind == "encoder":
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)
    assert len(a.hidden_states) == len(b.hidden_states)
    for ha, hb in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(ha, hb, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("name", CONFIGS)
def test_vmae_checkpoint_loads_in_transformers_with_equal_outputs(tmp_path, name, kind):
    ours_cls, hf_cls = PAIRS[kind]
    config = tiny_config(**CONFIGS[name], id2label=LABELS if kind == "classifier" else None)
    build(ours_cls, config, tmp_path)
    theirs, info = hf_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = ours_cls.from_pretrained(tmp_path)
    theirs.eval()
    x, mask = _inputs(config)
    _compare(ours, theirs, kind, x, mask)


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("name", ["mean-pool", "odd-widths-no-qv-bias", "non-square-tubelet1"])
def test_transformers_checkpoint_loads_in_vmae_with_equal_outputs(tmp_path, name, kind):
    ours_cls, hf_cls = PAIRS[kind]
    config = tiny_config(**CONFIGS[name], id2label=LABELS if kind == "classifier" else None)
    torch.manual_seed(3)
    theirs = hf_cls(transformers.VideoMAEConfig(**config.to_dict())).eval()
    with torch.no_grad():  # HF initialises biases to zero: randomise them so q_bias/v_bias really travel
        for n, p in theirs.named_parameters():
            if n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    theirs.save_pretrained(tmp_path)
    ours = ours_cls.from_pretrained(tmp_path)
    x, mask = _inputs(config, seed=4)
    _compare(ours, theirs, kind, x, mask)


def test_pretraining_matches_to_rounding(tmp_path):
    """vmae embeds only the visible tubelets (one matmul instead of the convolution over all of them): the
    same sums in another order, so equal to float rounding rather than to the bit."""
    config = tiny_config()
    build(VideoMAEForPreTraining, config, tmp_path)
    ours = VideoMAEForPreTraining.from_pretrained(tmp_path)
    theirs = transformers.VideoMAEForPreTraining.from_pretrained(tmp_path).eval()
    x, mask = _inputs(config)
    with torch.no_grad():
        a, b = ours(x, mask), theirs(x, bool_masked_pos=mask)
        emb_ours = ours.videomae.embeddings(x, mask)
        emb_all = ours.videomae.embeddings(x, None)
    assert (a.logits - b.logits).abs().max() < 1e-5 and (a.loss - b.loss).abs() < 1e-6
    assert torch.allclose(emb_ours, emb_all[~mask].reshape(emb_ours.shape), atol=1e-6)


@pytest.mark.parametrize("name", ["mean-pool", "token0-no-normpix", "odd-widths-no-qv-bias"])
def test_eager_attention_matches_sdpa(tmp_path, name):
    config = tiny_config(**CONFIGS[name], id2label=LABELS)
    build(VideoMAEForVideoClassification, config, tmp_path)
    model = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    x, _ = _inputs(config)
    with torch.no_grad():
        sdpa = model(x).logits
        model.set_attn_implementation("eager")
        out = model(x, output_attentions=True)
    torch.testing.assert_close(out.logits, sdpa, atol=1e-5, rtol=0)
    n = config.num_patches
    assert len(out.attentions) == config.num_hidden_layers
    assert out.attentions[0].shape == (2, config.num_attention_heads, n, n)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, n))


def test_training_gradients_match_transformers(tmp_path):
    """Same loss, same gradients: what pre-training relies on."""
    config = tiny_config()
    build(VideoMAEForPreTraining, config, tmp_path)
    ours = VideoMAEForPreTraining.from_pretrained(tmp_path).train()
    theirs = transformers.VideoMAEForPreTraining.from_pretrained(tmp_path).train()
    x, mask = _inputs(config)
    ours(x, mask).loss.backward()
    theirs(x, bool_masked_pos=mask).loss.backward()
    hf_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        hf_name = name.replace("q_bias", "query.bias").replace("v_bias", "value.bias")
        torch.testing.assert_close(p.grad, hf_grads[hf_name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_every_parameter_free_transformers_activation_is_reproduced_bit_for_bit():
    from transformers.activations import ACT2FN

    from vmae_cli.models.activations import ACTIVATIONS
    from vmae_cli.models.config import HIDDEN_ACTS

    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 4
    for name in HIDDEN_ACTS:
        assert torch.equal(ACTIVATIONS[name](x), ACT2FN[name](x)), name
    assert set(ACT2FN) - set(HIDDEN_ACTS) == {"prelu", "xielu"}  # the two with parameters


@pytest.mark.parametrize("act", ["gelu_new", "relu", "quick_gelu"])
def test_checkpoints_with_another_activation_move_both_ways(tmp_path, act):
    """transformers reads `hidden_act` for the encoder and the decoder alike; vmae used to refuse all but gelu."""
    config = tiny_config(hidden_act=act)
    torch.manual_seed(3)
    theirs = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**config.to_dict())).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    theirs.save_pretrained(tmp_path / "hf")
    ours = VideoMAEForPreTraining.from_pretrained(tmp_path / "hf")
    x, mask = _inputs(config, seed=4)
    _compare(ours, theirs, "pretraining", x, mask)
    ours.save_pretrained(tmp_path / "vmae")
    back, info = transformers.VideoMAEForPreTraining.from_pretrained(
        tmp_path / "vmae", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and back.config.hidden_act == act
    _compare(ours, back.eval(), "pretraining", x, mask)


@pytest.mark.parametrize("shape", [(1568, 768), (1568, 384), (8, 6), (5, 3)])
def test_position_table_is_transformers_bit_for_bit_and_a_new_tensor_each_call(shape):
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    from vmae_cli.models.layers import sinusoid_table

    first = sinusoid_table(*shape)
    assert torch.equal(first, get_sinusoid_encoding_table(*shape)[0])
    first.zero_()  # a model's buffer is its own: changing it leaves the next model's table as it was
    assert torch.equal(sinusoid_table(*shape), get_sinusoid_encoding_table(*shape)[0])
