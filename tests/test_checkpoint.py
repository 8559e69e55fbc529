"""Loading and saving checkpoints: folders, files, shards, pickles, the Hub cache, and every way it can fail."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vmae_cli import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel
from vmae_cli.errors import CheckpointError, FieldError
from vmae_cli.hub import resolve
from vmae_cli.models.modeling import ShapeError

from .models import TINY_PREPROCESSOR, build, tiny_classifier, tiny_config, tiny_pretraining


def _x(config, batch=1):
    h, w = config.image_hw
    return torch.randn(batch, config.num_frames, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_saved_folder_has_hf_layout_and_on_disk_names(tmp_path):
    tiny_classifier(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in keys
    assert "videomae.encoder.layer.0.attention.attention.v_bias" in keys
    assert not any(k.endswith("key.bias") or "position_embeddings" in k for k in keys)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEForVideoClassification"]
    assert config["qkv_bias"] is True and config["qv_bias"] is True
    assert config["id2label"] == {"0": "walking", "1": "running", "2": "jumping"}
    assert json.loads((tmp_path / "preprocessor_config.json").read_text()) == TINY_PREPROCESSOR


def test_classifier_checkpoint_loaded_as_encoder_gives_its_encoder(tmp_path):
    import transformers

    tiny_classifier(tmp_path)
    ours = VideoMAEModel.from_pretrained(tmp_path)
    theirs = transformers.VideoMAEModel.from_pretrained(tmp_path).eval()
    x = _x(ours.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, theirs(x).last_hidden_state, atol=1e-5, rtol=0)


def test_pretraining_checkpoint_as_classifier_gets_new_head_with_warning(tmp_path, caplog):
    tiny_pretraining(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vmae_cli"):
        model = VideoMAEForVideoClassification.from_pretrained(tmp_path, id2label={0: "x", 1: "y"})
    assert "weights of VideoMAEForVideoClassification" in caplog.text and "newly initialised" in caplog.text
    assert "classifier.weight" in caplog.text
    assert model.classifier.weight.shape == (2, 64)
    assert torch.isfinite(model(_x(model.config)).logits).all()
    encoder = VideoMAEForPreTraining.from_pretrained(tmp_path).videomae
    torch.testing.assert_close(
        model.videomae.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight
    )


def test_new_label_count_needs_ignore_mismatched_sizes(tmp_path):
    tiny_classifier(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"classifier.weight: \(3, 64\) in the file, \(5, 64\) in the model"
    ):
        VideoMAEForVideoClassification.from_pretrained(tmp_path, id2label=dict(enumerate("abcde")))
    model = VideoMAEForVideoClassification.from_pretrained(
        tmp_path, id2label=dict(enumerate("abcde")), ignore_mismatched_sizes=True
    )
    assert model.classifier.weight.shape == (5, 64)


def test_missing_or_unexpected_key_is_an_error_naming_it(tmp_path):
    tiny_classifier(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["videomae.encoder.layer.1.layernorm_after.weight"]
    state["videomae.something_else"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        VideoMAEForVideoClassification.from_pretrained(tmp_path)
    assert "missing 1 key(s): videomae.encoder.layer.1.layernorm_after.weight" in str(e.value)
    assert "unexpected 1 key(s): videomae.something_else" in str(e.value)


def test_transformers_in_memory_names_are_accepted(tmp_path):
    tiny_classifier(tmp_path)
    reference = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("q_bias", "query.bias").replace("v_bias", "value.bias"): v for k, v in state.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    x = _x(model.config)
    assert torch.equal(model(x).logits, reference(x).logits)


def test_sharded_safetensors_with_index(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_classifier(src)
    reference = VideoMAEForVideoClassification.from_pretrained(src)
    state = load_file(src / "model.safetensors")
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    dst.mkdir()
    shutil.copy(src / "config.json", dst)
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, dst / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, names in shards.items() for k in names}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    model = VideoMAEForVideoClassification.from_pretrained(dst)
    x = _x(model.config)
    assert torch.equal(model(x).logits, reference(x).logits)
    (dst / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard files are missing: model-00002-of-00002.safetensors"):
        VideoMAEForVideoClassification.from_pretrained(dst)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    tiny_classifier(tmp_path)
    reference = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    model = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    x = _x(model.config)
    assert torch.equal(model(x).logits, reference(x).logits)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_classifier(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"x": _Exploit()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles.*vmae convert"):
        VideoMAEForVideoClassification.from_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_safetensors_is_a_clear_error(tmp_path, damage):
    tiny_classifier(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 10, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="damaged or truncated safetensors file.*save the model again"):
        VideoMAEForVideoClassification.from_pretrained(tmp_path)


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        VideoMAEModel.from_pretrained(tmp_path / "nope" / "..x")
    with pytest.raises(CheckpointError, match="no config.json here, so it is not a model folder"):
        VideoMAEModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    with pytest.raises(CheckpointError, match="no weights"):
        VideoMAEModel.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    tiny_classifier(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 32
    config["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FieldError, match=r"config.json: hidden_size is 32, but model.safetensors holds 64"
    ) as e:
        VideoMAEForVideoClassification.from_pretrained(tmp_path)
    assert (e.value.path, e.value.field, e.value.value, e.value.allowed) == (
        tmp_path / "config.json",
        "hidden_size",
        32,
        64,
    )


def test_pixel_values_of_the_wrong_shape_name_the_expected_one(tmp_path):
    model = VideoMAEForVideoClassification(tiny_config(id2label={0: "a"}))
    for bad in [(1, 6, 3, 32, 32), (1, 4, 3, 32, 40), (1, 4, 3, 24, 32), (1, 4, 1, 32, 32), (4, 3, 32, 32)]:
        with pytest.raises(
            ShapeError,
            match=r"must have shape \(batch, 4, 3, 32, 32\).*got "
            + str(bad).replace("(", r"\(").replace(")", r"\)"),
        ):
            model(torch.zeros(bad))


def test_unequal_mask_counts_are_refused(tmp_path):
    config = tiny_config()
    model = VideoMAEForPreTraining(config)
    mask = torch.zeros(2, config.num_patches, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, :12] = True
    with pytest.raises(ShapeError, match=r"same number of tokens in every sample.*\[10, 12\]"):
        model(_x(config, batch=2), mask)
    with pytest.raises(ShapeError, match="needs bool_masked_pos"):
        model(_x(config, batch=2))
    with pytest.raises(ShapeError, match=r"bool_masked_pos must have shape \(2, 32\)"):
        model(_x(config, batch=2), torch.zeros(2, 31, dtype=torch.bool))


def _fake_hub_cache(cache, repo_id, folder, revision="main", commit="a" * 40):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap


def test_hub_id_resolves_from_offline_cache_with_revisions(tmp_path, isolated_hf_cache):
    tiny_classifier(tmp_path / "v1", labels=("a", "b"))
    tiny_classifier(tmp_path / "v2", labels=("a", "b", "c", "d"))
    _fake_hub_cache(isolated_hf_cache, "acme/videomae-tiny", tmp_path / "v1", "main", "1" * 40)
    _fake_hub_cache(isolated_hf_cache, "acme/videomae-tiny", tmp_path / "v2", "v2", "2" * 40)
    assert VideoMAEForVideoClassification.from_pretrained("acme/videomae-tiny").config.num_labels == 2
    assert (
        VideoMAEForVideoClassification.from_pretrained("acme/videomae-tiny", revision="v2").config.num_labels
        == 4
    )
    assert (
        VideoMAEForVideoClassification.from_pretrained(
            "acme/videomae-tiny", revision="2" * 40
        ).config.num_labels
        == 4
    )
    found = resolve("acme/videomae-tiny")
    assert found.preprocessor_path is not None and found.weights[0].name == "model.safetensors"
    assert VideoMAEConfig.from_pretrained("acme/videomae-tiny", revision="v2").num_labels == 4


def test_hub_id_not_cached_offline_says_how_to_get_it(isolated_hf_cache):
    with pytest.raises(
        CheckpointError, match=r"not in the local Hugging Face cache.*HF_HUB_OFFLINE.*hf download acme/absent"
    ):
        VideoMAEModel.from_pretrained("acme/absent")


def test_dtype_and_device_options(tmp_path):
    tiny_classifier(tmp_path)
    model = VideoMAEForVideoClassification.from_pretrained(tmp_path, dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    logits = model(_x(model.config).to(torch.bfloat16)).logits
    reference = VideoMAEForVideoClassification.from_pretrained(tmp_path)(_x(model.config)).logits
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)


def test_loading_into_bf16_rounds_each_weight_once_and_keeps_the_thread_count(tmp_path):
    """The weights are converted on one thread (checkpoint.cast_weights); the caller's threads are restored."""
    tiny_classifier(tmp_path)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = VideoMAEForVideoClassification.from_pretrained(tmp_path, dtype="bf16")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    on_disk = load_file(tmp_path / "model.safetensors")
    state = model.state_dict()
    for name, tensor in on_disk.items():
        assert state[name].dtype == torch.bfloat16, name
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name


def _hf_classifier(folder, **changes):
    """A transformers classifier saved by transformers, with its biases and norms randomised."""
    import transformers

    torch.manual_seed(2)
    theirs = transformers.VideoMAEForVideoClassification(
        transformers.VideoMAEConfig(**tiny_config(use_mean_pooling=True, **changes).to_dict())
    ).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    theirs.save_pretrained(folder)
    return theirs


def test_transformers_classifier_with_its_default_two_labels(tmp_path):
    """transformers leaves its default labels (two, LABEL_i) out of config.json, yet builds two outputs."""
    theirs = _hf_classifier(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "id2label" not in written and theirs.config.num_labels == 2
    x = _x(tiny_config())
    ours = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    assert ours.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=0)
    del written["architectures"]  # nothing in the file says "classifier" now: the weights do
    (tmp_path / "config.json").write_text(json.dumps(written))
    ours = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    assert ours.config.num_labels == 2
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=0)
    # `num_labels` in a file (without, or disagreeing with, id2label) wins, as in transformers
    assert VideoMAEConfig.from_dict({"num_labels": 3, "id2label": {"0": "a"}}).id2label == {
        0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"
    }  # fmt: skip


def test_label_less_classifier_round_trips_through_transformers(tmp_path):
    import transformers

    build(VideoMAEForVideoClassification, tiny_config(use_mean_pooling=True), tmp_path)  # no labels: no head
    assert json.loads((tmp_path / "config.json").read_text())["id2label"] == {}  # else transformers builds 2
    theirs, info = transformers.VideoMAEForVideoClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ours = VideoMAEForVideoClassification.from_pretrained(tmp_path)
    x = _x(ours.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs.eval()(x).logits, atol=1e-5, rtol=0)
    # fine-tuning it: fc_norm is kept, the classifier is new
    model = VideoMAEForVideoClassification.from_pretrained(tmp_path, id2label={0: "x", 1: "y"})
    assert model.classifier.weight.shape == (2, 64)
    torch.testing.assert_close(model.fc_norm.weight, ours.fc_norm.weight)
