"""transformers compatibility where users' code expects it, with transformers itself as the reference:
config output flags, default labels, a decoder for an encoder checkpoint, outputs as mappings, OSError for a
missing model, and the inputs VideoMAEImageProcessor takes."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from vmae_cli import (
    Preprocessor,
    VideoMAEConfig,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEModel,
)
from vmae_cli.errors import CheckpointError
from vmae_cli.models.loading import normalize_keys
from vmae_cli.models.masking import tube_mask
from vmae_cli.video.reader import VideoReader

from .conftest import DATA, run_vmae
from .models import build, tiny_classifier, tiny_config, tiny_encoder, tiny_pretraining

PAIRS = {
    "encoder": (VideoMAEModel, transformers.VideoMAEModel),
    "pretraining": (VideoMAEForPreTraining, transformers.VideoMAEForPreTraining),
    "classifier": (VideoMAEForVideoClassification, transformers.VideoMAEForVideoClassification),
}


def _pair(tmp_path, kind, **config_changes):
    """The same tiny checkpoint loaded by vmae and by transformers (eager attention: it returns attentions)."""
    ours_cls, hf_cls = PAIRS[kind]
    labels = {0: "a", 1: "b", 2: "c"} if kind == "classifier" else None
    build(ours_cls, tiny_config(use_mean_pooling=True, id2label=labels), tmp_path)
    ours = ours_cls.from_pretrained(tmp_path, **config_changes)
    theirs = hf_cls.from_pretrained(tmp_path, attn_implementation="eager", **config_changes).eval()
    return ours, theirs


def _call(model, kind, **kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 32, 32, generator=g)
    with torch.no_grad():
        if kind == "pretraining":
            return model(x, bool_masked_pos=tube_mask(tiny_config(), 2, 0.75, generator=g), **kwargs)
        return model(x, labels=torch.tensor([0, 2]), **kwargs) if kind == "classifier" else model(x, **kwargs)


def _same_outputs(a, b):
    """Two outputs (or tuples) alike: the same fields, in order, with equal values."""
    if not isinstance(a, tuple):
        assert list(a.keys()) == list(b.keys())
        a, b = a.to_tuple(), b.to_tuple()
    assert isinstance(b, tuple) and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", PAIRS)
def test_config_output_flags_are_honoured_and_keywords_override_them(tmp_path, kind):
    ours, theirs = _pair(tmp_path, kind, output_attentions=True, output_hidden_states=True)
    assert ours.config.output_attentions and ours.config.output_hidden_states
    a, b = _call(ours, kind), _call(theirs, kind)
    assert {"hidden_states", "attentions"} <= set(a.keys())
    _same_outputs(a, b)
    a, b = _call(ours, kind, output_attentions=False), _call(theirs, kind, output_attentions=False)
    assert "attentions" not in a and "hidden_states" in a
    _same_outputs(a, b)
    # config.return_dict=False: tuples. (transformers 5.24's head models fail on their own encoder's tuple
    # there, so the reference is its return_dict=False keyword)
    ours.config.return_dict = False
    _same_outputs(_call(ours, kind), _call(theirs, kind, return_dict=False))
    _same_outputs(_call(ours, kind, return_dict=True), _call(theirs, kind, return_dict=True))


def test_output_flags_travel_through_config_json_like_transformers(tmp_path):
    assert not {"output_attentions", "output_hidden_states", "return_dict"} & set(VideoMAEConfig().to_dict())
    VideoMAEConfig(output_hidden_states=True, return_dict=False).save_pretrained(tmp_path)
    theirs = transformers.VideoMAEConfig.from_pretrained(tmp_path)
    assert theirs.output_hidden_states and not theirs.return_dict and not theirs.output_attentions
    transformers.VideoMAEConfig(output_attentions=True).save_pretrained(tmp_path)
    ours = VideoMAEConfig.from_pretrained(tmp_path)
    assert ours.output_attentions and not ours.output_hidden_states and ours.return_dict and not ours.extra


def test_default_labels_and_num_labels_like_transformers():
    ours, theirs = VideoMAEConfig(), transformers.VideoMAEConfig()
    assert ours.id2label == theirs.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert ours.label2id == theirs.label2id and ours.num_labels == theirs.num_labels == 2
    for kwargs in ({"num_labels": 5}, {"id2label": {0: "a", 1: "b", 2: "c"}, "num_labels": 5},
                   {"id2label": {0: "a", 1: "b", 2: "c"}, "num_labels": 3}):  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = transformers.VideoMAEConfig(**kwargs)
        ours = VideoMAEConfig(**kwargs)
        assert ours.id2label == theirs.id2label and ours.num_labels == theirs.num_labels, kwargs
        for n in (3, 4, 0):  # a count that agrees keeps the names, another makes LABEL_i
            ours.num_labels = theirs.num_labels = n
            assert ours.id2label == theirs.id2label, (kwargs, n)
    assert VideoMAEConfig(id2label={0: "a", 1: "b"}).replace(num_labels=3).id2label == {
        0: "LABEL_0",
        1: "LABEL_1",
        2: "LABEL_2",
    }
    assert VideoMAEConfig(id2label={0: "a", 1: "b"}).replace(hidden_size=96).id2label == {0: "a", 1: "b"}
    assert VideoMAEConfig(id2label=None).num_labels == 0  # vmae's "no labels" (a pre-training model's file)
    config = tiny_config().replace(num_labels=4)
    assert VideoMAEForVideoClassification(config).classifier.out_features == 4
    hf = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**tiny_config().to_dict()))
    assert (
        VideoMAEForVideoClassification(
            tiny_config().replace(id2label=VideoMAEConfig().id2label)
        ).classifier.out_features
        == hf.classifier.out_features
        == 2
    )


@pytest.mark.parametrize("source", ["encoder", "classifier"])
def test_pretraining_model_from_an_encoder_or_classifier_gets_a_new_decoder(tmp_path, source, caplog):
    folder = (tiny_encoder if source == "encoder" else tiny_classifier)(tmp_path / source)
    with caplog.at_level(logging.WARNING, logger="vmae_cli"):
        model, info = VideoMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert "newly initialised" in caplog.text and "decoder.*" in caplog.text and "mask_token" in caplog.text
    _, theirs = transformers.VideoMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert set(info["missing_keys"]) == set(normalize_keys(dict.fromkeys(theirs["missing_keys"])))
    assert set(info["unexpected_keys"]) == set(theirs["unexpected_keys"])
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    weights = load_file(folder / "model.safetensors")
    key = "encoder.layer.1.output.dense.weight"
    torch.testing.assert_close(
        model.videomae.state_dict()[key], weights.get(key, weights.get(f"videomae.{key}"))
    )
    out = _call(model, "pretraining")
    assert torch.isfinite(out.loss) and not model.decoder.head.weight.is_meta


@pytest.mark.parametrize(
    "damage",
    ["one decoder key missing", "one encoder key missing", "a foreign key"],
)
def test_pretraining_model_still_refuses_wrong_checkpoints(tmp_path, damage):
    folder = tiny_pretraining(tmp_path) if damage == "one decoder key missing" else tiny_encoder(tmp_path)
    path = folder / "model.safetensors"
    weights = load_file(path)
    if damage == "a foreign key":
        weights["backbone.extra.weight"] = torch.zeros(2)
    else:
        weights.pop(
            next(k for k in weights if k.startswith("decoder." if "decoder" in damage else "encoder."))
        )
    save_file(weights, path)
    with pytest.raises(CheckpointError, match="checkpoint does not match VideoMAEForPreTraining"):
        VideoMAEForPreTraining.from_pretrained(folder)


@pytest.mark.parametrize("kind", PAIRS)
def test_outputs_are_mappings_like_transformers_model_outputs(tmp_path, kind):
    ours, theirs = _pair(tmp_path, kind)
    for kwargs in ({}, {"output_hidden_states": True}):
        a, b = _call(ours, kind, **kwargs), _call(theirs, kind, **kwargs)
        assert isinstance(a, Mapping) and list(a) == list(b) == list(a.keys()) == list(b.keys())
        assert len(a) == len(b) and [k for k, _ in a.items()] == list(b.keys())
        for name in ("loss", "logits", "last_hidden_state", "hidden_states", "attentions"):
            assert (name in a) == (name in b), name
            if name in b:
                assert a[name] is getattr(a, name)
            else:  # absent, as a None field is in transformers
                with pytest.raises(KeyError):
                    a[name]
                with pytest.raises(KeyError):
                    b[name]
        assert a[0] is a.to_tuple()[0] and len(list(a.values())) == len(b.to_tuple())
        assert 0 not in a and "nonsense" not in a
        _same_outputs(a, b)


@pytest.mark.parametrize("ref", ["missing-folder", "folder-without-config", "nobody/not-cached"])
def test_a_missing_model_is_an_oserror_as_in_transformers(tmp_path, ref):
    target = {"missing-folder": str(tmp_path / "nope"), "folder-without-config": str(tmp_path)}.get(ref, ref)
    with pytest.raises(OSError):
        transformers.VideoMAEModel.from_pretrained(target)
    for load in (VideoMAEModel.from_pretrained, VideoMAEConfig.from_pretrained, Preprocessor.from_pretrained):
        with pytest.raises(OSError) as caught:
            load(target)
        assert isinstance(caught.value, CheckpointError)
    result = run_vmae("info", target)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


# ---- Preprocessor: what VideoMAEImageProcessor takes ----------------------------------------------------
HUB = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2,
    "rescale_factor": 1 / 255, "size": {"shortest_edge": 224},
}  # fmt: skip


@pytest.fixture(scope="module")
def frames():
    """4 real frames, uint8 (4, H, W, 3)."""
    with VideoReader(DATA / "bikes.mp4") as r:
        return r.get_frames([0, 5, 10, 15])


@pytest.fixture(scope="module")
def hf_processor():
    pytest.importorskip("PIL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = getattr(transformers, "VideoMAEImageProcessorPil", None) or transformers.VideoMAEImageProcessor
        return cls(**HUB, do_convert_rgb=True)  # RGB conversion on: 1 and 4 channels are refused without


def _inputs(frames):
    """What VideoMAEImageProcessor takes, by name."""
    from PIL import Image

    h, w = frames.shape[1:3]
    alpha = np.broadcast_to(np.linspace(0, 255, w).astype(np.uint8)[None, :, None], (h, w, 1))
    rgba = np.concatenate([frames, np.broadcast_to(alpha, (len(frames), h, w, 1))], axis=-1)
    return {
        "list of frames": list(frames),
        "4-D array": frames,
        "channels first": list(frames.transpose(0, 3, 1, 2)),
        "torch frames": [torch.from_numpy(f) for f in frames],
        "PIL images": [Image.fromarray(f) for f in frames],
        "batch of videos": [list(frames), list(frames[::-1])],
        "batch of arrays": [frames, frames[::-1].copy()],
        "grey, 1 channel": list(frames[..., 1:2]),
        "grey PIL": [Image.fromarray(f).convert("L") for f in frames],
        "RGBA": list(rgba),
        "RGBA PIL": [Image.fromarray(np.ascontiguousarray(f)) for f in rgba],
    }


def test_preprocessor_takes_what_videomae_image_processor_takes(frames, hf_processor):
    ours = Preprocessor.from_dict(HUB)
    for name, videos in _inputs(frames).items():
        expected = hf_processor(videos, return_tensors="pt").pixel_values
        got = ours(videos, return_tensors="pt").pixel_values
        assert got.shape == expected.shape and got.dtype == torch.float32, name
        diff = (got - expected).abs()
        assert diff.max() <= 0.02 and diff.mean() <= 1e-3, (name, diff.max(), diff.mean())


def test_return_tensors_forms(frames, hf_processor):
    ours = Preprocessor.from_dict(HUB)
    plain = ours(frames)  # vmae's form, unchanged: one video in, (T, 3, S, S) out
    assert isinstance(plain, torch.Tensor) and plain.shape == (4, 3, 224, 224)
    assert torch.equal(ours(list(frames)), plain) and ours([frames, frames]).shape == (2, 4, 3, 224, 224)
    pt = ours(frames, return_tensors="pt")
    assert torch.equal(pt["pixel_values"], plain[None]) and pt.pixel_values is pt["pixel_values"]
    np_out, hf_np = ours(frames, return_tensors="np"), hf_processor(list(frames), return_tensors="np")
    assert type(np_out.pixel_values) is type(hf_np.pixel_values) is np.ndarray
    assert np_out.pixel_values.shape == hf_np.pixel_values.shape and np_out.pixel_values.dtype == np.float32
    listed = ours([frames, frames], return_tensors=None).pixel_values
    assert isinstance(listed, list) and len(listed) == 2 and torch.equal(listed[0], plain)
    with pytest.raises(ValueError, match="return_tensors"):
        ours(frames, return_tensors="tf")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((2, 8, 8, 2), np.uint8), "channel"),
        ([], "at least one frame"),
        ("clip.mp4", "expected a video"),
    ],
)
def test_preprocessor_refuses_what_it_cannot_read(bad, message):
    with pytest.raises(ValueError, match=message):
        Preprocessor()(bad)
