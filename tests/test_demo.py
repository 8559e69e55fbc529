"""The bundled demo models (models/motion, models/motion-pretrained) and clips (examples/motion): what
`make demo` runs. They were trained by scripts/train_demo.sh; these tests check them on clips the generator
makes now, with a seed the training never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vmae_cli.models.modeling import VideoMAEForPreTraining, VideoMAEForVideoClassification

from .conftest import REPO, load_script, run_vmae

CLASSIFIER, ENCODER, EXAMPLES = (
    REPO / "models" / "motion",
    REPO / "models" / "motion-pretrained",
    REPO / "examples" / "motion",
)


def _generator():
    return load_script("make_synthetic")


def test_make_demo_classifies_every_bundled_clip_correctly(cpu_bf16):
    """A trained model, as `make demo` runs it: right on every clip with bf16 (--dtype auto on a CPU with native
    bf16) and without."""
    clips = sorted(EXAMPLES.glob("*.mp4"))
    assert len(clips) == 8
    out = run_vmae("classify", *map(str, clips), "--model", str(CLASSIFIER), "--jsonl", "--quiet")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["predictions"][0]["label"] for r in records] == [c.stem for c in clips]


def test_demo_classifier_on_fresh_held_out_clips(tmp_path):
    """Clips drawn now from the generator with an unseen seed: 3 per class."""
    _generator().make_dataset(tmp_path, unlabelled=0, train=0, val=3, samples=0, seed=2026)
    out = run_vmae("evaluate", str(tmp_path / "val"), "--model", str(CLASSIFIER), "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["count"] == 24
    assert result["top1"] >= 0.85, result["per_class"]


@pytest.mark.parametrize(
    ("folder", "ours", "theirs"),
    [
        (CLASSIFIER, VideoMAEForVideoClassification, "VideoMAEForVideoClassification"),
        (ENCODER, VideoMAEForPreTraining, "VideoMAEForPreTraining"),
    ],
)
def test_demo_models_load_in_transformers_with_equal_outputs(folder, ours, theirs):
    transformers = pytest.importorskip("transformers")
    a = ours.from_pretrained(folder).eval()
    b, info = getattr(transformers, theirs).from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    b.eval()
    config = a.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.num_frames, 3, *config.image_hw, generator=g)
    with torch.no_grad():
        if ours is VideoMAEForPreTraining:
            from vmae_cli.models.masking import tube_mask

            mask = tube_mask(config, 2, 0.75, generator=g)
            np.testing.assert_allclose(a(x, mask).logits, b(x, bool_masked_pos=mask).logits, atol=1e-5)
        else:
            np.testing.assert_allclose(a(x).logits, b(x).logits, atol=1e-5)


def test_demo_classifier_carries_its_labels_and_sampling():
    config = json.loads((CLASSIFIER / "config.json").read_text())
    sampling = json.loads((CLASSIFIER / "preprocessor_config.json").read_text())["frame_sampling"]
    assert sorted(config["id2label"].values()) == sorted(_generator().MOTIONS)
    assert (sampling["frames"], sampling["stride"]) == (8, 2)
