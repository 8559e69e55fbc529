"""One pooling function: the classifier's head, `features()` and `vmae embed` all pool through `layers.pool`."""

from __future__ import annotations

import pytest
import torch

from vmae_cli.inference.tasks import RunOptions, classify_pooling, embed_pooling, load_model
from vmae_cli.models.layers import POOLINGS, pool
from vmae_cli.models.modeling import VideoMAEForVideoClassification, VideoMAEModel

from .models import build, tiny_config, tiny_encoder


def _clip(config, batch: int = 2) -> torch.Tensor:
    (h, w), c, t = config.image_hw, config.num_channels, config.num_frames
    return torch.randn(batch, t, c, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_the_classifier_reads_what_pool_gives(tmp_path, mean_pooling):
    config = tiny_config(id2label={0: "a", 1: "b", 2: "c"}, use_mean_pooling=mean_pooling)
    model = VideoMAEForVideoClassification.from_pretrained(
        build(VideoMAEForVideoClassification, config, tmp_path / "cls")
    ).eval()
    x = _clip(config)
    with torch.no_grad():
        tokens = model.videomae(x, return_dict=True).last_hidden_state
        by_hand = model.fc_norm(tokens.mean(1)) if mean_pooling else tokens[:, 0]
        pooled = pool(tokens, model.pooling, model.fc_norm)
        assert (
            model.pooling == classify_pooling(model.config) == ("mean+fc_norm" if mean_pooling else "token0")
        )
        assert torch.equal(pooled, by_hand)
        assert torch.equal(model.features(x), pooled)
        assert torch.equal(model(x, return_dict=True).logits, model.classifier(pooled))


def test_embed_heads_pool_the_encoder_tokens(tmp_path):
    folder = tiny_encoder(tmp_path / "enc")
    encoder = VideoMAEModel.from_pretrained(folder).eval()
    x = _clip(encoder.config)
    with torch.no_grad():
        tokens = encoder(x, return_dict=True).last_hidden_state  # (B, N, D)
        by_hand = {"mean": tokens.mean(1), "token0": tokens[:, 0], "none": tokens.reshape(len(x), -1)}
        for how, expected in by_hand.items():
            assert torch.equal(pool(tokens, how), expected)
            _, engine = load_model(str(folder), None, how, RunOptions(device="cpu", dtype="fp32"))
            assert torch.equal(engine.head(x), expected), how
        _, engine = load_model(str(folder), None, "auto", RunOptions(device="cpu", dtype="fp32"))
        assert embed_pooling(encoder.config) == "mean" and torch.equal(engine.head(x), by_hand["mean"])


def test_pool_refuses_what_it_does_not_know():
    tokens = torch.zeros(1, 4, 8)
    assert POOLINGS == ("mean+fc_norm", "mean", "token0", "none")
    with pytest.raises(ValueError, match="one of"):
        pool(tokens, "max")
    with pytest.raises(ValueError, match="norm"):
        pool(tokens, "mean+fc_norm")
