"""`vmae convert`: original VideoMAE, VideoMAEv2 and transformers checkpoints -> HF folders, safely and faithfully.

Source checkpoints are built here from tiny random models, renamed to the original layout by the documented
key names (independently of vmae_cli.convert), and saved the way the original training scripts save them.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file

from vmae_cli import VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel
from vmae_cli.convert.build import convert_checkpoint, load_labels
from vmae_cli.convert.layouts import ConversionError
from vmae_cli.convert.reference import reference_forward
from vmae_cli.errors import CheckpointError, UsageError
from vmae_cli.models.masking import tube_mask

from .conftest import run_vmae
from .models import build, tiny_config

EPS = 1e-6  # the original models' LayerNorm eps
TOLERANCE = 1e-4
LABELS = {0: "walking", 1: "running", 2: "jumping"}
DIFFS: dict[str, float] = {}  # measured differences, printed at the end (pytest -s)

# transformers layer suffix -> original block suffix (transformers-videomae.md, section 4)
BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}  # fmt: skip


def to_original(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers on-disk names -> MCG-NJU/VideoMAE names (pre-training: `encoder.` before the encoder)."""
    enc = "encoder." if "encoder_to_decoder.weight" in hf else ""
    out, qkv = {}, {}
    for key, value in hf.items():
        key = key.removeprefix("videomae.")
        m = re.match(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)", key)
        if m:
            block = (f"{enc}blocks." if m[1] == "encoder.layer" else "decoder.blocks.") + m[2] + "."
            rest = m[3]
            if rest.startswith("attention.attention.") and rest.endswith(".weight"):
                qkv.setdefault(block, {})[rest.split(".")[2]] = value
                continue
            for ours, theirs in BLOCK.items():
                if rest.startswith(ours):
                    out[block + theirs + rest[len(ours) :]] = value.clone()
            continue
        key = key.replace("embeddings.patch_embeddings.projection", f"{enc}patch_embed.proj")
        key = re.sub(r"^layernorm\.", f"{enc}norm.", key).replace("classifier.", "head.")
        out[key] = value.clone()
    for block, parts in qkv.items():
        out[block + "attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def add_layer_scale(state: dict[str, torch.Tensor], seed: int = 5) -> dict[str, torch.Tensor]:
    """VideoMAEv2-style gamma_1/gamma_2, with proj/fc2 divided by them so the network computes the same thing."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key in [k for k in state if k.endswith("attn.proj.weight") or k.endswith("mlp.fc2.weight")]:
        block, linear = key.rsplit(".", 3)[0], key.rsplit(".", 1)[0]
        gamma = 0.5 + torch.rand(state[key].shape[0], generator=g)
        out[f"{block}.gamma_{1 if 'attn' in key else 2}"] = gamma
        out[key] = state[key] / gamma[:, None]
        out[f"{linear}.bias"] = state[f"{linear}.bias"] / gamma
    return out


def source_model(tmp_path, kind: str, **changes):
    """A tiny random model with the original's eps; returns (model, its transformers-named state dict)."""
    cls = {"pretraining": VideoMAEForPreTraining, "classifier": VideoMAEForVideoClassification,
           "encoder": VideoMAEModel}[kind]  # fmt: skip
    labels = LABELS if kind == "classifier" else None
    config = tiny_config(layer_norm_eps=EPS, id2label=labels, **changes)
    folder = build(cls, config, tmp_path / f"source-{kind}")
    model = cls.from_pretrained(folder)
    return model, load_file(folder / "model.safetensors")


def training_checkpoint(weights, wrapper="model", **args):
    """What the original scripts save: weights under `model` (or DeepSpeed `module`) next to an args Namespace."""
    return {
        wrapper: weights, "epoch": 7, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "scaler": {"scale": 65536.0, "_growth_tracker": 3},
        "args": argparse.Namespace(model="vit_tiny", batch_size=8, window_size=(2, 4, 4), device="cuda", **args),
    }  # fmt: skip


def inputs(config, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = config.image_hw
    x = torch.randn(2, config.num_frames, 3, h, w, generator=g)  # (B, T, C, H, W)
    return x, tube_mask(config, 2, mask_ratio=0.75, generator=g)


# name: (model kind, model changes, how to turn the original state into the file, convert kwargs)
CASES = {
    "v1-pretrain": ("pretraining", {}, lambda s: training_checkpoint(s, num_frames=4, input_size=32),
                    dict(heads=4, decoder_heads=2)),
    "v1-finetune": ("classifier", dict(use_mean_pooling=True), lambda s: training_checkpoint(s, data_set="UCF101"),
                    dict(heads=4, num_frames=4, image_size=32)),
    "v1-finetune-token0": ("classifier", dict(use_mean_pooling=False), lambda s: {"model": s},
                           dict(heads=4, num_frames=4, image_size=32)),
    "deepspeed-module": ("classifier", dict(use_mean_pooling=True),
                         lambda s: training_checkpoint({f"module.{k}": v for k, v in s.items()}, "module",
                                                       num_frames=4, input_size=32),
                         dict(heads=4)),
    "v2-layer-scale": ("classifier", dict(use_mean_pooling=True),
                       lambda s: training_checkpoint({f"_orig_mod.{k}": v for k, v in add_layer_scale(s).items()},
                                                     num_frames=4, input_size=32, num_sample=2),
                       dict(heads=4)),
    "v2-pretrain-layer-scale": ("pretraining", {}, lambda s: training_checkpoint(add_layer_scale(s), num_frames=4,
                                                                                 input_size=32, num_sample=4),
                                dict(heads=4, decoder_heads=2)),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_original_checkpoint_converts_and_matches_the_original_forward(tmp_path, case):
    kind, changes, to_file, kwargs = CASES[case]
    model, hf_state = source_model(tmp_path, kind, **changes)
    original = to_original(hf_state)
    if "layer-scale" in case:
        original = add_layer_scale(original)
    torch.save(to_file(to_original(hf_state)), tmp_path / "checkpoint.pth")

    result = convert_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "out", check=True, **kwargs)
    assert result.layout == kind and result.max_abs_diff <= TOLERANCE
    assert result.source == ("v2" if case.startswith("v2") else "original")
    folded = {"v2-layer-scale": 2, "v2-pretrain-layer-scale": 3}.get(case, 0)  # encoder (+ decoder) blocks
    assert result.folded_layer_scale == folded
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_norm_eps"] == EPS and config["num_frames"] == 4 and config["image_size"] == 32
    pre = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 32} and pre["crop_size"] == {"height": 32, "width": 32}

    ours_cls, hf_cls = {
        "pretraining": (VideoMAEForPreTraining, transformers.VideoMAEForPreTraining),
        "classifier": (VideoMAEForVideoClassification, transformers.VideoMAEForVideoClassification),
    }[kind]
    ours = ours_cls.from_pretrained(tmp_path / "out")
    theirs, info = hf_cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()

    x, mask = inputs(ours.config)
    with torch.no_grad():
        expected = reference_forward(original, ours.config, x.permute(0, 2, 1, 3, 4), mask)  # (B, C, T, H, W)
        if kind == "pretraining":
            outs = [ours(x, mask).logits, theirs(x, bool_masked_pos=mask).logits, model(x, mask).logits]
        else:
            outs = [ours(x).logits, theirs(x).logits, model(x).logits]
    vs_reference = max((o - expected).abs().max().item() for o in outs[:2])
    DIFFS[case] = vs_reference
    assert vs_reference <= TOLERANCE
    torch.testing.assert_close(
        outs[0], outs[2], atol=1e-5, rtol=0
    )  # the renaming reproduces the source model
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(3)} if kind == "classifier" else True


def test_hf_pytorch_model_bin_converts_to_safetensors(tmp_path):
    model, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "source-classifier" / "config.json").read_text())
    in_memory = {
        k.replace(".q_bias", ".query.bias").replace(".v_bias", ".value.bias"): v for k, v in hf_state.items()
    }
    torch.save(in_memory, folder / "pytorch_model.bin")  # transformers 5.x in-memory names
    result = convert_checkpoint(folder, tmp_path / "out", check=True)
    DIFFS["hf-bin"] = result.max_abs_diff
    assert result.source == "hf" and result.max_abs_diff <= TOLERANCE
    converted = VideoMAEForVideoClassification.from_pretrained(tmp_path / "out")
    assert converted.config.id2label == LABELS and converted.config.layer_norm_eps == EPS
    x, _ = inputs(converted.config)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, model(x).logits, atol=0, rtol=0)


def test_hf_source_with_another_activation_verifies(tmp_path):
    """--verify's reference forward uses the config's activation (it hard-coded gelu: silu failed by ~1e-3)."""
    model, _ = source_model(tmp_path, "encoder", hidden_act="silu")
    result = convert_checkpoint(tmp_path / "source-encoder", tmp_path / "out", check=True)
    assert result.source == "hf" and result.max_abs_diff <= 1e-5
    converted = VideoMAEModel.from_pretrained(tmp_path / "out")
    x, _ = inputs(converted.config)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).last_hidden_state, model(x).last_hidden_state, atol=0, rtol=0)


def test_pos_embed_sinusoid_is_dropped_and_gives_the_frame_count(tmp_path):
    _, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    original = to_original(hf_state)
    from vmae_cli.models.layers import sinusoid_table

    original["pos_embed"] = sinusoid_table(32, 64).unsqueeze(0)  # 2 x 4 x 4 tokens: 4 frames at 32 px
    torch.save({"model": original}, tmp_path / "c.pth")
    result = convert_checkpoint(tmp_path / "c.pth", tmp_path / "out", heads=4, image_size=32, check=True)
    assert result.dropped == ["pos_embed"] and result.config["num_frames"] == 4
    assert result.origins["num_frames"] == "pos_embed length"

    original["pos_embed"] = original["pos_embed"] + 0.01  # learned
    torch.save({"model": original}, tmp_path / "learned.pth")
    with pytest.raises(ConversionError, match="learned"):
        convert_checkpoint(tmp_path / "learned.pth", tmp_path / "out2", heads=4, image_size=32)
    assert not (tmp_path / "out2").exists()


def test_unsupported_checkpoints_are_refused_clearly(tmp_path):
    _, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    original = to_original(hf_state)
    cos = dict(original, **{"blocks.0.attn.scale": torch.zeros(4, 1, 1)})
    torch.save({"model": cos}, tmp_path / "cos.pth")
    with pytest.raises(ConversionError, match="cosine attention"):
        convert_checkpoint(tmp_path / "cos.pth", tmp_path / "out")
    torch.save({"model": original}, tmp_path / "plain.pth")
    with pytest.raises(UsageError, match="pass `heads`"):  # width 64 is no standard ViT
        convert_checkpoint(tmp_path / "plain.pth", tmp_path / "out")
    with pytest.raises(ConversionError, match="no patch embedding"):
        torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
        convert_checkpoint(tmp_path / "other.pth", tmp_path / "out")
    with pytest.raises(ConversionError, match="`source` hf, but"):
        convert_checkpoint(tmp_path / "plain.pth", tmp_path / "out", source="hf", heads=4)
    assert not (tmp_path / "out").exists()


class _Payload:
    """A pickle that would create a file when loaded: the file must never appear."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    marker = tmp_path / "pwned"
    torch.save(dict(training_checkpoint(to_original(hf_state)), hook=_Payload(marker)), tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused.*could run code"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "out", heads=4)
    assert not marker.exists() and not (tmp_path / "out").exists()

    done = run_vmae("convert", str(tmp_path / "evil.pth"), str(tmp_path / "out"), "--heads", "4")
    assert done.returncode == 2, done.stderr  # the source cannot be read: the run cannot start
    assert "refused" in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_labels_bundled_and_from_files(tmp_path):
    k400, ssv2 = load_labels("k400", 400), load_labels("ssv2", 174)
    assert (k400[0], k400[116], k400[399]) == ("abseiling", "eating spaghetti", "zumba")
    assert (ssv2[0], ssv2[173]) == (
        "Approaching something with your camera",
        "Wiping something off of something",
    )
    (tmp_path / "l.txt").write_text("walking\nrunning\njumping\n")
    assert load_labels(str(tmp_path / "l.txt"), 3) == LABELS
    (tmp_path / "l.json").write_text(json.dumps({"walking": "0", "running": "1", "jumping": "2"}))  # label2id
    assert load_labels(str(tmp_path / "l.json"), 3) == LABELS
    with pytest.raises(UsageError, match="3 labels, but the classifier head has 400"):
        load_labels(str(tmp_path / "l.txt"), 400)
    with pytest.raises(UsageError, match="no such file"):
        load_labels("k700", 700)


def test_destination_is_written_whole_or_not_at_all(tmp_path):
    _, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    torch.save(training_checkpoint(to_original(hf_state), num_frames=4, input_size=32), tmp_path / "c.pth")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="pass `force` to replace it"):
        convert_checkpoint(tmp_path / "c.pth", tmp_path / "out", heads=4)
    with pytest.raises(ConversionError, match="verification failed"):  # the eps difference alone exceeds 0
        convert_checkpoint(
            tmp_path / "c.pth", tmp_path / "out", heads=4, force=True, check=True, tolerance=0.0
        )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    convert_checkpoint(tmp_path / "c.pth", tmp_path / "out", heads=4, force=True)
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "keep.txt").exists()


def test_cli_convert_json_summary_and_usage_errors(tmp_path):
    _, hf_state = source_model(tmp_path, "classifier", use_mean_pooling=True)
    torch.save(training_checkpoint(to_original(hf_state), num_frames=4, input_size=32), tmp_path / "c.pth")
    (tmp_path / "names.txt").write_text("walking\nrunning\njumping\n")
    done = run_vmae("convert", str(tmp_path / "c.pth"), str(tmp_path / "out"), "--heads", "4", "--verify",
                    "--labels", str(tmp_path / "names.txt"), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (
        summary["architecture"] == "VideoMAEForVideoClassification" and summary["config"]["num_labels"] == 3
    )
    assert summary["max_abs_diff"] <= TOLERANCE
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]["1"] == "running"

    again = run_vmae("convert", str(tmp_path / "c.pth"), str(tmp_path / "out"), "--heads", "4")
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    wrong = run_vmae(
        "convert", str(tmp_path / "c.pth"), str(tmp_path / "o2"), "--heads", "4", "--labels", "k400"
    )
    assert wrong.returncode == 2 and "400 labels, but the classifier head has 3" in wrong.stderr


def test_report_measured_differences():
    """Not a check: prints what the conversions above measured (run with -s)."""
    for name, diff in DIFFS.items():
        print(f"max |converted - original reference| {name}: {diff:.2e}")
