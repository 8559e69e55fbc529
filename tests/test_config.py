"""VideoMAEConfig <-> config.json, against transformers' VideoMAEConfig."""

from __future__ import annotations

import json

import pytest
import transformers

from vmae_cli.errors import ConfigError
from vmae_cli.models.config import VideoMAEConfig, preset_names
from vmae_cli.models.modeling import count_parameters

HF_FIELDS = [
    "image_size",
    "patch_size",
    "num_channels",
    "num_frames",
    "tubelet_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "use_mean_pooling",
    "decoder_num_attention_heads",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_intermediate_size",
    "norm_pix_loss",
]


def test_defaults_equal_transformers():
    ours, theirs = VideoMAEConfig(), transformers.VideoMAEConfig()
    for name in HF_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.qkv_bias == theirs.qv_bias


@pytest.mark.parametrize("key", ["qkv_bias", "qv_bias"])
def test_both_bias_spellings_are_read(key):
    assert VideoMAEConfig.from_dict({key: False}).qkv_bias is False
    assert VideoMAEConfig.from_dict({key: True}).qkv_bias is True


def test_hub_style_config_round_trips_and_keeps_unknown_fields(tmp_path):
    hub = {  # a 4.x-era file, as on the Hub
        "_name_or_path": "/tmp/x",
        "architectures": ["VideoMAEForVideoClassification"],
        "qkv_bias": False,
        "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0",
        "model_type": "videomae",
        "id2label": {"0": "abseiling", "1": "air drumming"},
        "label2id": {"abseiling": 0, "air drumming": 1},
        "image_size": [160, 224],
        "patch_size": 16,
        "problem_type": "single_label_classification",
        "custom_field": {"nested": [1, 2]},
    }
    config = VideoMAEConfig.from_dict(hub)
    assert config.id2label == {0: "abseiling", 1: "air drumming"} and config.num_labels == 2
    assert config.image_hw == (160, 224) and config.grid == (8, 10, 14) and config.qkv_bias is False
    assert config.extra == {"custom_field": {"nested": [1, 2]}}
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["custom_field"] == {"nested": [1, 2]} and written["image_size"] == [160, 224]
    assert written["id2label"] == {"0": "abseiling", "1": "air drumming"}
    assert written["label2id"] == {"abseiling": 0, "air drumming": 1}
    assert VideoMAEConfig.from_json_file(tmp_path / "config.json") == config
    theirs = transformers.VideoMAEConfig.from_pretrained(tmp_path)
    assert (
        theirs.qv_bias is False
        and theirs.num_labels == 2
        and theirs.problem_type == "single_label_classification"
    )
    for name in HF_FIELDS:
        value = getattr(theirs, name)
        assert (list(value) if isinstance(value, tuple) else value) == written[name], name


def test_transformers_written_config_is_read(tmp_path):
    theirs = transformers.VideoMAEConfig(
        hidden_size=96,
        num_attention_heads=3,
        qv_bias=False,
        use_mean_pooling=False,
        id2label={0: "x"},
        patch_size=8,
        image_size=64,
    )
    theirs.save_pretrained(tmp_path)
    ours = VideoMAEConfig.from_json_file(tmp_path / "config.json")
    assert (ours.hidden_size, ours.num_attention_heads, ours.qkv_bias, ours.use_mean_pooling) == (
        96,
        3,
        False,
        False,
    )
    assert ours.id2label == {0: "x"} and ours.num_patches == 8 * 8 * 8


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_size": 30, "patch_size": 16}, "not a multiple of patch_size"),
        ({"num_frames": 15}, "not a multiple of tubelet_size"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "not divisible by num_attention_heads"),
        ({"model_type": "vit"}, "not a VideoMAE model"),
        ({"hidden_act": "prelu"}, "hidden_act 'prelu' is not supported"),  # transformers' has parameters
        ({"id2label": ["a", "b"]}, "invalid VideoMAE config"),
        ({"num_labels": "3"}, "num_labels must be a count"),
        ({"num_frames": None}, "num_frames must be a whole number, got None"),
        ({"hidden_size": "big"}, "hidden_size must be a whole number, got 'big'"),
        ({"image_size": [32, "a"]}, r"image_size must be a whole number, got \[32, 'a'\]"),
        ({"layer_norm_eps": "1e-6"}, "layer_norm_eps must be a number"),
    ],
)
def test_invalid_configs_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        VideoMAEConfig.from_dict(bad)


def test_broken_json_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        VideoMAEConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text('{"num_frames": null}')  # the message names the file and the field
    with pytest.raises(ConfigError, match=r"config\.json: invalid VideoMAE config: num_frames must be"):
        VideoMAEConfig.from_json_file(tmp_path / "config.json")


@pytest.mark.parametrize("name", ["small", "base", "large", "huge"])
def test_presets_have_the_published_shapes(name):
    import torch

    config = VideoMAEConfig.from_preset(name)
    if name in ("small", "base"):  # transformers builds the same architecture (slowly for L/H)
        with torch.device("meta"):
            hf_pre = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**config.to_dict()))
        assert count_parameters(config, "VideoMAEForPreTraining") == sum(
            p.numel() for p in hf_pre.parameters()
        )
    D, L, I = config.hidden_size, config.num_hidden_layers, config.intermediate_size  # noqa: E741
    per_layer = 4 * D * D + 2 * D + D + 2 * D * I + I + D + 4 * D  # q,k,v,o + q/v bias + o bias + mlp + 2 LNs
    encoder = 3 * 2 * 16 * 16 * D + D + L * per_layer + 2 * D  # tubelet embedding, layers, final LN
    assert count_parameters(config, "VideoMAEModel") == encoder


def test_preset_names():
    assert preset_names() == ["base", "huge", "large", "mini", "small", "tiny"]
    small = VideoMAEConfig.from_preset("small")
    assert (small.hidden_size, small.num_attention_heads, small.decoder_hidden_size) == (384, 6, 192)
    with pytest.raises(ConfigError, match="unknown preset 'gigantic'"):
        VideoMAEConfig.from_preset("gigantic")
