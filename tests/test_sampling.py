"""Samplers against hand-computed indices (the original VideoMAE test/train protocols)."""

import numpy as np
import pytest

from vmae_cli.errors import ConfigError
from vmae_cli.video.sampling import (
    SamplingSpec,
    random_segment_indices,
    random_window_indices,
    segment_indices,
    window_indices,
)


def test_window_central_clip():
    # 100 frames, every 4th: sub has 25 entries; central start (25 - 16) // 2 = 4 -> frames 16, 20, ... 76
    np.testing.assert_array_equal(window_indices(100, 16, 4), [np.arange(16, 80, 4)])
    np.testing.assert_array_equal(window_indices(10, 4, 1), [[3, 4, 5, 6]])


def test_window_five_clips_match_the_original_offsets():
    # 300 frames / 4 -> 75 entries; step = (75 - 16) / 4 = 14.75 -> starts 0, 14, 29, 44, 59
    got = window_indices(300, 16, 4, num_clips=5)
    assert got.shape == (5, 16) and got.dtype == np.int64
    starts = [0, 14, 29, 44, 59]
    np.testing.assert_array_equal(got, [(s + np.arange(16)) * 4 for s in starts])


def test_window_short_video_policies():
    # 10 frames, stride 4: sub = [0, 4, 8]
    np.testing.assert_array_equal(window_indices(10, 6, 4), [[0, 4, 8, 8, 8, 8]])
    np.testing.assert_array_equal(window_indices(10, 6, 4, pad="loop"), [[0, 4, 8, 0, 4, 8]])
    np.testing.assert_array_equal(window_indices(1, 4, 2, num_clips=3), [[0, 0, 0, 0]] * 3)
    with pytest.raises(ValueError):
        window_indices(10, 6, 4, pad="zeros")
    with pytest.raises(ValueError):
        window_indices(0, 16, 4)


def test_segment_views_match_ssv2():
    # tick = 50 / 8 = 6.25
    np.testing.assert_array_equal(segment_indices(50, 8, "start"), [0, 6, 12, 18, 25, 31, 37, 43])
    np.testing.assert_array_equal(segment_indices(50, 8, "mid"), [3, 9, 15, 21, 28, 34, 40, 46])
    np.testing.assert_array_equal(segment_indices(3, 6), [0, 0, 1, 1, 2, 2])  # short: frames repeat


def test_random_window():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = random_window_indices(rng, 100, 16, 4)
        assert idx[0] >= 0 and idx[-1] <= 99
        np.testing.assert_array_equal(np.diff(idx), 4)
    np.testing.assert_array_equal(random_window_indices(rng, 61, 16, 4), np.arange(0, 61, 4))  # exactly fits
    np.testing.assert_array_equal(random_window_indices(rng, 5, 4, 2), [0, 2, 4, 4])  # short
    jittered = random_window_indices(np.random.default_rng(1), 100, 16, 4, jitter=True)
    assert np.all(np.diff(jittered) >= 1) and jittered.max() <= 99


def test_random_segments():
    rng = np.random.default_rng(0)
    idx = random_segment_indices(rng, 80, 8)
    assert idx.shape == (8,) and np.all(idx // 10 == np.arange(8))  # one per segment of 10
    np.testing.assert_array_equal(random_segment_indices(rng, 80, 8, jitter=False), segment_indices(80, 8))
    np.testing.assert_array_equal(random_segment_indices(rng, 4, 8), [0, 0, 1, 1, 2, 2, 3, 3])


def test_spec_round_trip_and_views():
    spec = SamplingSpec(mode="window", frames=16, stride=4, clips=5, crops=3)
    assert SamplingSpec.from_dict(spec.to_dict()) == spec
    assert spec.indices(300).shape == (5, 16)
    ssv2 = SamplingSpec(mode="uniform", frames=8, clips=2)
    np.testing.assert_array_equal(
        ssv2.indices(50), [segment_indices(50, 8, "start"), segment_indices(50, 8, "mid")]
    )
    with pytest.raises(ConfigError):
        SamplingSpec.from_dict({"mode": "window", "frame": 16})
    with pytest.raises(ConfigError):
        SamplingSpec(mode="dense")


@pytest.mark.parametrize("crops", [0, 2, 4])
def test_only_the_papers_crops_exist(crops):
    """1 (center) and 3 (along the long side) are the test views; a frame_sampling with 2 is refused too."""
    with pytest.raises(ConfigError, match="1 \\(the center\\) or 3"):
        SamplingSpec.from_dict({"mode": "window", "crops": crops})
