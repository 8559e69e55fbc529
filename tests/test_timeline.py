"""`classify --timeline`: every window is sampled as the model was trained, and every segment says how.

The videos change along time (a new scene every second) and the models carry the real Kinetics-400 and
Something-Something-v2 label sets, as the Hub's classifiers do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae_cli.models.modeling import VideoMAEForVideoClassification
from vmae_cli.video.preprocess import Preprocessor
from vmae_cli.video.reader import VideoReader
from vmae_cli.video.sampling import SamplingSpec
from vmae_cli.video.timeline import Timeline, plan_timeline

from .conftest import vmae_in_process as vmae
from .models import TINY_PREPROCESSOR, build, tiny_config
from .videos import frame_picture, write_video

LABELS = Path(__file__).resolve().parents[1] / "src" / "vmae_cli" / "labels"
FPS = 25
T, STRIDE = 4, 2  # the test model's clip: 4 frames at stride 2, 7 frames (0.32 s of sampling) end to end
SPAN = (T - 1) * STRIDE + 1


def _labels(name: str) -> dict[int, str]:
    return {int(k): v for k, v in json.loads((LABELS / f"{name}.json").read_text()).items()}


def _model(folder: Path, labels: str, sampling: dict) -> Path:
    """A tiny classifier with a real label set, sampling as `sampling` says (as `vmae finetune` writes it)."""
    config = tiny_config(use_mean_pooling=True, id2label=_labels(labels))
    preprocessor = {**TINY_PREPROCESSOR, "frame_sampling": sampling}
    return build(VideoMAEForVideoClassification, config, folder, preprocessor=preprocessor)


def _write_scenes(path: Path, seconds: float, size=(64, 48)) -> Path:
    """A new scene every second (background colour), the frame number drawn as bands in the middle."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]

    def scene(f: int, w: int, h: int) -> np.ndarray:
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colours[(f // FPS) % len(colours)]
        img[h // 4 : 3 * h // 4] = frame_picture(f, w, h // 2)
        return img

    return write_video(path, round(seconds * FPS), size=size, rate=FPS, gop=10, picture=scene)


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    sampling = {"mode": "window", "frames": T, "stride": STRIDE, "clips": 1, "crops": 1, "pad": "repeat_last"}
    return _model(tmp_path_factory.mktemp("k400"), "k400", sampling)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_scenes(tmp_path_factory.mktemp("scenes") / "scenes.mp4", 4.0)  # 100 frames


def _timeline(capsys, path, model, *args):
    code, out, err = vmae(capsys, "classify", path, "--model", model, "--json", "--dtype", "fp32", "--timeline",
                          *args)  # fmt: skip
    assert code == 0, err
    return json.loads(out)[0], err


def _expected_windows(n: int, window: float, hop: float) -> list[tuple[float, float, int, int]]:
    """(start, end) seconds and frames [a, b) of each window of a constant-rate video, from first principles:
    a window every hop, and one more at the end for the tail; a frame is in a window if its time is."""
    duration = n / FPS
    starts = [k * hop for k in range(int((duration - window) / hop + 1e-9) + 1)]
    if starts[-1] + window < duration - 1e-6:
        starts.append(duration - window)
    ends = [min(s + window, duration) for s in starts]
    return [
        (s, e, math.ceil(s * FPS - 1e-6), math.ceil(e * FPS - 1e-6))
        for s, e in zip(starts, ends, strict=True)
    ]


def _expected_clips(a: int, b: int, n: int, per: int, stride: int = STRIDE) -> list[list[int]]:
    """A window of at least one clip: `per` clips spread as --clips spreads them over a video (the first at
    the window's first frame, the last ending in the window), or the centred one; a shorter window: the one
    clip centred on it, moved inside the video."""
    span = (T - 1) * stride + 1
    if b - a < span:
        first = min(max(a + (b - a - span) // 2, 0), n - span)
        return [[first + stride * t for t in range(T)]] * per
    positions = math.ceil((b - a) / stride)  # every stride-th frame of the window
    if per == 1:
        starts = [(positions - T) // 2]
    else:
        starts = [int(k * (positions - T) / (per - 1)) for k in range(per)]
    return [[a + stride * (s + t) for t in range(T)] for s in starts]


def _reference_scores(model_dir: Path, path: Path, clips: list[list[int]]) -> torch.Tensor:
    """The segment's scores computed here, from the frames the record names: softmax averaged over clips."""
    model = VideoMAEForVideoClassification.from_pretrained(model_dir).eval()
    pre = Preprocessor.from_dict(TINY_PREPROCESSOR)
    with VideoReader(path) as reader:
        x = torch.stack([pre(reader.get_frames(c)) for c in clips])
    with torch.no_grad():
        return model(x).logits.softmax(-1).mean(0)


@pytest.mark.parametrize(
    "window, hop, per",
    [
        (0.12, 0.12, 1),  # 3 frames: shorter than one clip (7 frames)
        (0.32, 0.32, 1),  # one clip's length (clips x stride / fps): one centred clip
        (0.64, 0.5, 2),  # 2x: two clips
        (1.6, 0.8, 5),  # 5x: five clips
        (1.0, 0.4, 4),  # 3.1x: enough clips to cover it, ceil(1.0 / 0.32)
    ],
)
def test_each_window_samples_the_models_clips(capsys, k400, video, window, hop, per):
    record, err = _timeline(capsys, video, k400, "--window", str(window), "--hop", str(hop))
    t = record["timeline"]
    assert (t["window"], t["hop"], t["clips_per_window"]) == (window, hop, per)
    assert (t["sampling"], t["frames"], t["stride"], t["clip_seconds"]) == ("window", T, STRIDE, 0.32)
    assert t["clip_longer_than_window"] == (window < 0.28)  # 7 frames at 25 fps
    windows = _expected_windows(100, window, hop)
    assert [(s["start"], s["end"]) for s in record["segments"]] == [
        (round(s, 3), round(e, 3)) for s, e, _, _ in windows
    ]
    for seg, (_, _, a, b) in zip(record["segments"], windows, strict=True):
        frames = [c["frames"] for c in seg["clips"]]
        assert frames == _expected_clips(a, b, 100, per)
        assert all(
            np.diff(f).tolist() == [STRIDE] * (T - 1) for f in frames
        )  # the model's stride, no repeats
        assert [c["times"] for c in seg["clips"]] == [[round(f / FPS, 6) for f in c] for c in frames]
    assert record["views"] == len(windows) * per
    assert record["frames"] == [c["frames"] for s in record["segments"] for c in s["clips"]]
    # a window shorter than a clip is said once, on stderr, and in the record; otherwise nothing is said
    assert err.count("shorter than one clip") == (1 if window < 0.28 else 0)


def test_a_window_of_one_clip_is_centred_and_a_short_one_reaches_beyond_it(capsys, k400, video):
    record, _ = _timeline(
        capsys, video, k400, "--window", "0.32"
    )  # 8 frames: the 7-frame clip from its first
    assert [c["frames"] for c in record["segments"][1]["clips"]] == [[8, 10, 12, 14]]
    record, _ = _timeline(capsys, video, k400, "--window", "0.12")  # 3 frames
    clips = [s["clips"][0]["frames"] for s in record["segments"]]
    assert clips[0] == [0, 2, 4, 6]  # centred on frames 0-2 would start at -2: moved inside the video
    assert clips[1] == [1, 3, 5, 7]  # frames 3-5: centred, frame 4 in the middle
    assert clips[-1] == [93, 95, 97, 99]  # the last window, frames 97-99: moved inside the video


def test_segment_scores_are_the_named_frames_as_the_model_sees_them(capsys, k400, video):
    """Each segment's predictions are its clips' softmax averaged, from exactly the frames it reports."""
    record, _ = _timeline(capsys, video, k400, "--window", "1", "--hop", "1", "-k", "3")
    tops = set()
    for seg in record["segments"]:
        expected = _reference_scores(k400, video, [c["frames"] for c in seg["clips"]])
        for p in seg["predictions"]:
            assert p["label"] == _labels("k400")[p["index"]]
            assert abs(p["score"] - float(expected[p["index"]])) < 1e-4
        assert seg["predictions"][0]["index"] == int(expected.argmax())
        tops.add(seg["predictions"][0]["index"])
    assert len(tops) > 1  # the scenes differ, and so do the windows' labels


def test_clips_and_stride_are_honoured(capsys, k400, video):
    record, _ = _timeline(capsys, video, k400, "--window", "2", "--hop", "2", "--clips", "3", "--stride", "3")
    t = record["timeline"]
    assert (t["clips_per_window"], t["stride"], t["clip_seconds"]) == (3, 3, 0.48)
    for seg, (_, _, a, b) in zip(record["segments"], _expected_windows(100, 2.0, 2.0), strict=True):
        assert [c["frames"] for c in seg["clips"]] == _expected_clips(a, b, 100, 3, stride=3)
    record, _ = _timeline(capsys, video, k400, "--window", "2", "--hop", "2", "--crops", "3")
    assert record["timeline"]["clips_per_window"] == 7 and record["views"] == 2 * 7 * 3  # ceil(2 / 0.32)


def test_a_window_holding_the_whole_video_is_plain_classify(capsys, k400, video):
    """Same frames, same scores: a timeline window samples as if it were the whole video."""
    code, out, _ = vmae(
        capsys, "classify", video, "--model", k400, "--json", "--dtype", "fp32", "--clips", "3"
    )
    plain = json.loads(out)[0]
    record, _ = _timeline(capsys, video, k400, "--window", "4", "--clips", "3")
    assert len(record["segments"]) == 1
    assert [c["frames"] for c in record["segments"][0]["clips"]] == plain["frames"]
    assert record["segments"][0]["predictions"] == record["predictions"] == plain["predictions"]


def test_a_video_shorter_than_one_clip_gets_plain_classifys_padded_clip(capsys, tmp_path, k400):
    short = _write_scenes(tmp_path / "short.mp4", 0.2)  # 5 frames
    code, out, _ = vmae(capsys, "classify", short, "--model", k400, "--json", "--dtype", "fp32")
    record, err = _timeline(capsys, short, k400)
    assert (
        json.loads(out)[0]["frames"]
        == [[0, 2, 4, 4]]
        == [c["frames"] for c in record["segments"][0]["clips"]]
    )
    assert record["timeline"]["clip_longer_than_window"] and "shorter than one clip" in err


def test_uniform_models_spread_their_segments_over_the_window_and_say_so(capsys, tmp_path, video):
    sampling = {"mode": "uniform", "frames": T, "stride": 4, "clips": 1, "crops": 1, "pad": "repeat_last"}
    ssv2 = _model(tmp_path / "ssv2", "ssv2", sampling)
    record, _ = _timeline(capsys, video, ssv2, "--window", "1", "--hop", "1")
    assert record["timeline"] == {"window": 1.0, "hop": 1.0, "clips_per_window": 1, "crops": 1,
                                  "sampling": "uniform", "frames": T}  # fmt: skip
    for k, seg in enumerate(record["segments"]):  # 25 frames, 4 segments: their middles
        assert [c["frames"] for c in seg["clips"]] == [[25 * k + 3, 25 * k + 9, 25 * k + 15, 25 * k + 21]]
        assert seg["predictions"][0]["label"] in _labels("ssv2").values()
    code, table, _ = vmae(capsys, "classify", video, "--model", ssv2, "--timeline", "--window", "1")
    assert code == 0 and "4 segments spread over each window (as the model was trained)" in table


def test_the_table_says_what_was_done(capsys, k400, video):
    code, table, err = vmae(capsys, "classify", video, "--model", k400, "--timeline", "--window", "0.64",
                            "--hop", "0.5", "--dtype", "fp32")  # fmt: skip
    assert code == 0, err
    assert (
        "0.64 s windows every 0.50 s" in table
        and "2 clips of 4 frames x stride 2 (0.32 s) per window" in table
    )
    assert "frames" in table and "0-14" in table  # the first window's clips: frames 0-6 and 8-14
    assert "longer than" not in table
    code, table, err = vmae(capsys, "classify", video, "--model", k400, "--timeline", "--window", "0.1",
                            "--dtype", "fp32")  # fmt: skip
    assert "a clip (0.32 s) is longer than the 0.10 s window" in table
    assert err.count("shorter than one clip") == 1  # once per run, not once per window


def test_windows_are_placed_in_time_for_variable_frame_rates():
    """Frames 40 ms and 100 ms apart: a window holds the frames whose times lie in it, whatever their rate."""
    ts = np.cumsum([0] + [0.04, 0.04, 0.1] * 10)  # 0, .04, .08, .18, .22, .26, .36, .40, .44, .54, ...
    spec = SamplingSpec(frames=2, stride=2)
    plan = plan_timeline(ts, fps=(len(ts) - 1) / ts[-1], spec=spec, timeline=Timeline(window=0.36, clips=1))
    assert plan.windows[:3] == [(0.0, 0.36), (0.36, 0.72), (0.72, 1.08)]
    # frames [0, 6), [6, 12), [12, 18): six frames each, the clip centred as plain classify centres it in a
    # video of six frames (on the stride grid from the first frame: positions 0, 2, 4 -> the first two)
    np.testing.assert_array_equal(plan.indices[:3], [[0, 2], [6, 8], [12, 14]])
