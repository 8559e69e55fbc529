"""VideoReader: exact frames for every codec/container/pixel format, seeking, rotation, VFR, faults."""

import errno
import logging
import os
import time
import warnings

import av
import numpy as np
import pytest

from vmae_cli.errors import VmaeError
from vmae_cli.video import reader as video_module
from vmae_cli.video.errors import (
    EmptyVideoError,
    NoVideoStreamError,
    VideoDecodeError,
    VideoError,
    VideoNotFoundError,
    VideoPermissionError,
    VideoTimeoutError,
)
from vmae_cli.video.reader import VideoReader

from .videos import (
    GOOD,
    frame_number,
    make_videos,
    remux_with_garbage,
    straight_decode,
    write_audio,
    write_audio_with_cover,
    write_video,
)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="session")
def bad(tmp_path_factory, videos):
    """Broken inputs, each paired with the exception it must raise."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("this is not a video\n" * 50)
    whole = videos["h264_mp4"].read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # PyAV writes the moov atom last
    write_audio(d / "audio.mka")
    write_audio_with_cover(d / "cover.m4a")
    # a leading moov atom cut short: FFmpeg finds a data stream of no known codec, or a codec-less video one
    head = write_video(d / "head.mp4", 10, container_options={"movflags": "faststart"}).read_bytes()
    (d / "head300.mp4").write_bytes(head[:300])
    (d / "head400.mp4").write_bytes(head[:400])
    return {
        "missing": (d / "nope.mp4", VideoNotFoundError),
        "folder": (d, VideoNotFoundError),
        "empty": (d / "empty.mp4", EmptyVideoError),
        "random": (d / "random.mp4", VideoDecodeError),
        "text": (d / "notes.txt", VideoDecodeError),
        "truncated_mp4": (d / "truncated.mp4", VideoDecodeError),
        "audio_only": (d / "audio.mka", NoVideoStreamError),
        "cover_art": (d / "cover.m4a", NoVideoStreamError),
        "moov_cut_short": (d / "head300.mp4", VideoDecodeError),
        "moov_cut_short_codec_unknown": (d / "head400.mp4", VideoDecodeError),
    }


ALL = [*GOOD, "rot90_mp4", "rot270_mp4", "vfr_mkv", "vfr_mp4"]


@pytest.mark.parametrize("name", ALL)
def test_any_indices_equal_a_straight_decode(videos, name):
    path = videos[name]
    ref = straight_decode(path)
    turns = {"rot90_mp4": 1, "rot270_mp4": 3}.get(name, 0)
    ref = np.rot90(ref, turns, axes=(1, 2))
    rng = np.random.default_rng(0)
    with VideoReader(path) as r:
        assert r.count_frames() == len(ref)
        assert (r.height, r.width) == ref.shape[1:3]
        for _ in range(4):  # unsorted, repeated, each call seeks afresh
            idx = rng.integers(0, len(ref), size=7)
            got = r.get_frames(idx)
            assert got.dtype == np.uint8 and got.shape == (7, *ref.shape[1:])
            np.testing.assert_array_equal(got, ref[idx])
        if not turns:  # the picture says which frame it is, whatever the codec or pixel format
            assert [frame_number(f) for f in r.get_frames(np.arange(len(ref))[::-1])] == list(
                range(len(ref))
            )[::-1]


@pytest.mark.parametrize(
    "name",
    [
        "h264_mp4",
        "h264_bframes_mkv",
        "mpeg4_avi",
        "vp9_webm",
        "intra_refresh_mkv",
        "hevc_bframes_mp4",
        "av1_mkv",
        "mpeg2_bframes_ts",
    ],  # fmt: skip
)
def test_windows_after_a_seek_are_exact_and_really_seek(videos, name, monkeypatch):
    path = videos[name]
    ref = straight_decode(path)
    with VideoReader(path) as r:
        monkeypatch.setattr(r, "_decode_sequential", lambda *a: pytest.fail("fell back to decoding from 0"))
        n = r.count_frames()
        for start in range(0, n - 4, 3):
            idx = np.arange(start, min(start + 12, n), 2)
            np.testing.assert_array_equal(r.get_frames(idx), ref[idx])


def test_metadata(videos):
    with VideoReader(videos["h264_mp4"]) as r:
        assert (r.width, r.height, r.rotation) == (64, 48, 0)
        assert r.fps == pytest.approx(25)
        assert r.duration == pytest.approx(120 / 25, abs=0.05)
        assert r.num_frames == 120 and r.count_frames() == 120
        np.testing.assert_allclose(r.timestamps, np.arange(120) / 25)


def test_rotation_makes_frames_upright(videos):
    # frame 1 lights only the rightmost band; turned 90 degrees counter-clockwise it is on top
    for name, rotation, lit_rows in [("rot90_mp4", 90, slice(0, 8)), ("rot270_mp4", 270, slice(-8, None))]:
        with VideoReader(videos[name]) as r:
            assert r.rotation == rotation
            assert (r.width, r.height) == (32, 64)  # stored 64x32
            frame = r.get_frames([1])[0]
            assert frame.shape == (64, 32, 3)
            assert frame[lit_rows].mean() > 200 and frame[16:48].mean() < 50
            small = r.get_frames([1], size=(16, 40))[0]  # size is (width, height) as displayed
            assert small.shape == (40, 16, 3)


def test_size_fast_path_resizes_in_swscale(videos):
    with VideoReader(videos["h264_mp4"]) as r:
        frames = r.get_frames([3, 77], size=(128, 96))
    assert frames.shape == (2, 96, 128, 3)
    assert [frame_number(f) for f in frames] == [3, 77]


@pytest.mark.parametrize("name", ["vfr_mkv", "vfr_mp4"])
def test_vfr_index_is_presentation_order(videos, name):
    gaps = [0] + [40 if i % 3 else 100 for i in range(1, 30)]
    with VideoReader(videos[name]) as r:
        np.testing.assert_allclose(r.timestamps, np.cumsum(gaps) / 1000)
        assert not r.frame_index().approximate  # uneven sample table: the exact demuxed index
        assert [frame_number(f) for f in r.get_frames([29, 3, 17, 3])] == [29, 3, 17, 3]


def test_constant_rate_mp4_uses_the_sample_table(videos, monkeypatch):
    with VideoReader(videos["h264_mp4"]) as r:
        monkeypatch.setattr(r, "_build_index", lambda: pytest.fail("demuxed the whole file"))
        assert r.frame_index().approximate and r.count_frames() == 120
        assert [frame_number(f) for f in r.get_frames([117, 3, 64])] == [117, 3, 64]


def test_off_grid_frames_rebuild_the_index(videos):
    ref = straight_decode(videos["h264_mp4"])
    with VideoReader(videos["h264_mp4"]) as r:
        grid = r.frame_index()
        r._index = type(grid)(grid.pts + 1, grid.key_pts, grid.key_seek, True, True)  # a grid that lies
        np.testing.assert_array_equal(r.get_frames([50, 7]), ref[[50, 7]])
        assert not r.frame_index().approximate


def test_short_clips(videos):
    for name, n in [("one_frame_mp4", 1), ("three_frames_mp4", 3)]:
        with VideoReader(videos[name]) as r:
            assert r.count_frames() == n
            # indices past the end are clamped to the last frame
            assert [frame_number(f) for f in r.get_frames([0, n - 1, n, n + 40])] == [0, n - 1, n - 1, n - 1]


def test_indices_past_the_end_are_clamped_and_reported(tmp_path, caplog):
    """The README's snippet, `get_frames(range(0, 64, 4))`, on a 16-frame clip: 12 of the 16 indices are past
    the end. They still give the last frame (the shape stays what was asked for), and the call says so once."""
    path = write_video(tmp_path / "short.mp4", 16, gop=8)
    with VideoReader(path) as r:
        with caplog.at_level(logging.WARNING, logger="vmae_cli.video.reader"):
            frames = r.get_frames(range(0, 64, 4))
        assert [frame_number(f) for f in frames] == [0, 4, 8, 12] + [15] * 12
        assert r.clamped.tolist() == list(range(16, 64, 4))
        [record] = caplog.records
        assert record.getMessage() == (
            f"{path}: 12 of 16 frame indices (16, 20, 24, ...) are past the end (the video has 16 frames); "
            "they were clamped to its last frame, 15"
        )
        caplog.clear()
        r.get_frames([15, 15, 3])  # in range: nothing to report
        assert r.clamped.tolist() == [] and caplog.records == []
        r.get_frames([20, 21, 22, 40])
        assert "4 of 4 frame indices (20-22, 40) are past the end" in caplog.records[0].getMessage()


def test_read_returns_frames_with_their_timestamps(tmp_path):
    """`read` gives what `get_frames` gives and, beside each frame, its presentation time: a variable-rate
    file, so that no index / fps could stand in for them; indices past the end take the last frame's time."""
    pts = np.cumsum([0, 40, 40, 10, 10, 90, 40, 40, 25, 25, 60, 40, 40]).tolist()  # ms
    path = write_video(tmp_path / "vfr.mkv", len(pts), gop=4, pts=pts)
    ref = straight_decode(path)
    with VideoReader(path) as r:
        ts = r.timestamps
        np.testing.assert_allclose(ts, np.array(pts) / 1000)
        batch = r.read([12, 3, 3, 7, 30])
        np.testing.assert_array_equal(batch.frames, ref[[12, 3, 3, 7, 12]])
        np.testing.assert_array_equal(batch.timestamps, ts[[12, 3, 3, 7, 12]])
        assert r.clamped.tolist() == [30]
        rows = np.array([[0, 2, 4], [5, 9, 11]])
        assert r.times(rows).shape == (2, 3) and r.times(rows)[1, 1] == ts[9]
        assert r.read([]).frames.shape == (0, 48, 64, 3) and r.read([]).timestamps.shape == (0,)
        with pytest.raises(ValueError, match=">= 0"):
            r.times([-1])


def test_overstated_header_is_clamped_to_the_last_decodable_frame(videos, tmp_path):
    whole = videos["h264_bframes_mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])  # the header still says 60 frames (2.4 s)
    last = frame_number(straight_decode(cut)[-1])
    with VideoReader(cut) as r:
        n = r.num_frames  # what is really there, not the 60 frames (2.4 s) the header claims
        assert 5 < n < 55 and r.count_frames() == n == len(straight_decode(cut))
        frames = r.get_frames([0, n - 1, 59])
    assert [frame_number(f) for f in frames] == [0, last, last]


def test_corrupt_packet_is_skipped_with_a_warning(videos, tmp_path):
    path = remux_with_garbage(videos["h264_bframes_mkv"], tmp_path / "bad.mkv", {30, 31})
    with VideoReader(path) as r, pytest.warns(RuntimeWarning) as caught:
        frames = r.get_frames(np.arange(60))
    messages = " | ".join(str(w.message) for w in caught)
    assert "corrupt packet" in messages and "did not decode" in messages
    numbers = [frame_number(f) for f in frames]
    assert numbers[:25] == list(range(25)) and numbers[-10:] == list(range(50, 60))


def test_corrupt_bytes_mid_file_never_crash(videos, tmp_path):
    data = bytearray(videos["h264_mp4"].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 500] = np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes()
    (tmp_path / "bytes.mp4").write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with VideoReader(tmp_path / "bytes.mp4") as r:
            frames = r.get_frames(np.arange(0, 120, 7))
    assert frames.shape == (18, 48, 64, 3)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "folder",
        "empty",
        "random",
        "text",
        "truncated_mp4",
        "audio_only",
        "cover_art",
        "moov_cut_short",
        "moov_cut_short_codec_unknown",
    ],
)
def test_bad_input_raises_the_right_error_quickly(bad, case):
    path, error = bad[case]
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        with VideoReader(path) as r:
            r.get_frames([0])
    assert time.monotonic() - t0 < 2
    assert isinstance(info.value, VideoError) and isinstance(info.value, VmaeError)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_time_limit(videos):
    with VideoReader(videos["h264_mp4"]) as r:
        r.count_frames()
        r.timeout = 1e-9
        with pytest.raises(VideoTimeoutError, match="time limit"):
            r.get_frames([100])


def test_negative_index_is_a_usage_error(videos):
    with VideoReader(videos["three_frames_mp4"]) as r, pytest.raises(ValueError):
        r.get_frames([-1])


def test_unreliable_timestamps_fall_back_to_counting(tmp_path):
    # raw H.264 has no container timestamps: frames are named by counting from the start
    path = write_video(tmp_path / "raw.h264", 15, gop=5)
    ref = straight_decode(path)
    with VideoReader(path) as r:
        assert r.count_frames() == len(ref)
        np.testing.assert_array_equal(r.get_frames([14, 2, 7]), ref[[14, 2, 7]])


def _counting_decodes(monkeypatch) -> list:
    """Patch the reader's decoding loop to list the pts of every frame it decodes; returns that list."""
    seen = []
    real = video_module.safe_decode

    def counting(*args):
        for frame in real(*args):
            seen.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_module, "safe_decode", counting)
    return seen


def test_unwanted_non_reference_frames_are_skipped_yet_frames_stay_exact(tmp_path, monkeypatch):
    """B-frames that nothing is predicted from are not decoded unless wanted, before the window or inside it
    (frame threads: the picture is large enough for them); what comes out still equals a straight decode."""
    path = write_video(tmp_path / "bpyramid.mp4", 90, size=(352, 288), gop=90,
                       options={"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:scenecut=0"})  # fmt: skip
    ref = straight_decode(path)
    seen = _counting_decodes(monkeypatch)
    with VideoReader(path) as r:
        for idx in (np.arange(60, 90, 2), np.arange(30, 46, 4), np.array([89, 70, 71])):
            seen.clear()
            np.testing.assert_array_equal(r.get_frames(idx), ref[idx])
            start = r.frame_index().pts[idx.min()]
            before, within = [t for t in seen if t < start], [t for t in seen if t >= start]
            assert len(before) < 0.75 * idx.min(), (len(before), idx.min())  # about half are non-reference
            assert len(within) < idx.max() - idx.min() + 1 and len(within) >= len(set(idx))
        seen.clear()
        np.testing.assert_array_equal(r.get_frames(np.arange(90)), ref)  # nothing skipped from frame 0 on
        assert len(seen) == 90


def test_num_frames_and_duration_are_exact_whatever_the_header_says(videos, tmp_path):
    """Matroska has no frame count: duration x rate was far off for a late start or a variable rate."""
    late = write_video(tmp_path / "late.mkv", 20, pts=[40_000 + 40 * i for i in range(20)])  # starts at 40 s
    with VideoReader(late) as r:
        assert r.num_frames == 20 and r.duration == pytest.approx(0.8)
    with VideoReader(videos["vfr_mkv"]) as r:
        assert r.num_frames == 30


def test_mp4_edit_list_hides_frames_before_its_start(tmp_path):
    """A file cut without re-encoding starts after a keyframe: the frames before the cut are in the file
    (decoded as references), flagged discard, and not part of the video."""
    path = write_video(tmp_path / "trimmed.mp4", 30, gop=10, pts=[(i - 5) * 40 for i in range(30)])
    ref = straight_decode(path)
    assert len(ref) == 25 and frame_number(ref[0]) == 5
    with VideoReader(path) as r:
        assert r.num_frames == r.count_frames() == 25
        idx = [24, 0, 12, 13]
        np.testing.assert_array_equal(r.get_frames(idx), ref[idx])


def test_cut_short_mp4_with_leading_moov_counts_what_is_there(tmp_path):
    """A faststart MP4 cut short still lists every sample in its moov: the count comes from the packets."""
    whole = write_video(tmp_path / "whole.mp4", 60, gop=10, container_options={"movflags": "faststart"})
    with av.open(str(whole)) as c:
        sample = c.streams.video[0].index_entries[30]  # the 31st packet, in file order
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: sample.pos + sample.size // 2])  # cut in the middle of it
    ref = straight_decode(cut, skip_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last packet is cut mid-way
        with VideoReader(cut) as r:
            n = r.count_frames()
            assert len(ref) <= n <= len(ref) + 1 < 40
            frames = r.get_frames([0, n - 1, 59])
    last = frame_number(ref[-1])
    assert [frame_number(f) for f in frames] == [0, last, last]


def test_a_frame_that_does_not_decode_takes_its_nearest_decoded_neighbour(tmp_path):
    """Not the nearest *wanted* frame: asking for [0, last] with a damaged last packet gives the one before."""
    src = write_video(tmp_path / "ip.mkv", 20, gop=10, options={"x264-params": "bframes=0"})
    path = remux_with_garbage(src, tmp_path / "bad_end.mkv", {19})
    with VideoReader(path) as r, pytest.warns(RuntimeWarning) as caught:
        frames = r.get_frames([0, 19])
    assert [frame_number(f) for f in frames] == [0, 18]
    assert any("did not decode" in str(w.message) for w in caught)


def test_unreadable_file_is_a_permission_error(videos, tmp_path, monkeypatch):
    path = tmp_path / "locked.mp4"
    path.write_bytes(videos["h264_mp4"].read_bytes())
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: have FFmpeg answer as it does for everyone else

        def denied(*args, **kwargs):
            raise av.error.PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(video_module.av, "open", denied)
    with pytest.raises(VideoPermissionError, match="permission denied") as info:
        VideoReader(path)
    assert str(path) in str(info.value) and isinstance(info.value, VideoError)


def test_avi_with_b_frames_is_named_by_counting(videos):
    """AVI has no presentation times; FFmpeg's guesses follow decode order, so they cannot name frames."""
    with VideoReader(videos["h264_bframes_avi"]) as r:
        assert not r.frame_index().reliable
        assert [frame_number(f) for f in r.get_frames([7, 2, 29, 3])] == [7, 2, 29, 3]


def test_mpeg_ps_timestamps_that_move_after_a_seek_are_not_trusted(videos):
    """MPEG-PS interpolates the timestamps of packets without one, differently after a seek."""
    ref = straight_decode(videos["mpeg1_bframes_mpg"])
    with VideoReader(videos["mpeg1_bframes_mpg"]) as r:
        for start in range(0, 28):
            idx = np.arange(start, min(start + 6, 30), 2)
            np.testing.assert_array_equal(r.get_frames(idx), ref[idx])


def test_a_stream_that_changes_size_midway_keeps_one_shape(tmp_path):
    """Joined HLS renditions: frames after the switch are scaled to the size the header gives."""
    a = write_video(tmp_path / "a.ts", 12, size=(64, 48), gop=6)
    b = write_video(tmp_path / "b.ts", 12, size=(96, 64), gop=6, pts=[2000 + 40 * i for i in range(12)])
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    with VideoReader(joined) as r:
        assert (r.width, r.height) == (64, 48) and r.count_frames() == 24
        frames = r.get_frames([0, 11, 12, 23])
        assert frames.shape == (4, 48, 64, 3)
        assert [frame_number(f) for f in frames] == [0, 11, 0, 11]
        assert r.get_frames([20]).shape == (1, 48, 64, 3) and (r.width, r.height) == (64, 48)


# ---- frames far apart: runs, one seek each (issue 12 item 3) -------------------------------------------------
SPARSE = ["h264_mp4", "h264_bframes_mkv", "hevc_bframes_mp4", "vp9_webm", "vp8_webm", "av1_mkv", "mpeg4_avi",
          "mpeg2_bframes_ts", "intra_refresh_mkv", "mjpeg_avi", "h264_bframes_avi", "mpeg1_bframes_mpg"]  # fmt: skip


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    """The codecs and containers of the exact-frames set, 150 frames long with a keyframe every 6 to 12."""
    root = tmp_path_factory.mktemp("long")
    out = {}
    for name in SPARSE:
        fname, kwargs = GOOD[name]
        kwargs = {**kwargs, "num_frames": 150}
        if "gop" in kwargs or name == "mjpeg_avi":
            kwargs["gop"] = min(kwargs.get("gop", 1), 10)
        out[name] = write_video(root / fname, **kwargs)
    return out


@pytest.mark.parametrize("name", SPARSE)
def test_frames_far_apart_are_exact_in_every_codec(long_videos, name, monkeypatch):
    """Sparse sets read in runs, one seek per run, still equal a straight decode; the streams whose timestamps
    cannot name frames after a seek (AVI with B-frames, MPEG-PS) still count from the start, and stay exact."""
    ref = straight_decode(long_videos[name])
    seen = _counting_decodes(monkeypatch)
    rng = np.random.default_rng(1)
    with VideoReader(long_videos[name]) as r:
        assert r.count_frames() == len(ref) == 150
        np.testing.assert_array_equal(r.get_frames([149, 3]), ref[[149, 3]])
        if r.frame_index().reliable:  # two runs: not the 140 frames between
            assert len(seen) < 60
        for idx in ([3, 4, 5, 70, 71, 72, 140], *(rng.integers(0, 150, size=5) for _ in range(6))):
            np.testing.assert_array_equal(r.get_frames(idx), ref[idx])


@pytest.mark.parametrize("suffix", ["mkv", "mp4"])  # exact demuxed index / the mp4 sample table's
@pytest.mark.parametrize("bframes", [0, 3])
def test_two_frames_far_apart_decode_about_two_gops(tmp_path, monkeypatch, suffix, bframes):
    """`get_frames([a, b])` seeks again for b when a keyframe lies between: about one GOP decoded for each,
    not the hundreds of frames between them."""
    gop = 25
    options = {"x264-params": f"bframes={bframes}:b-adapt=0:scenecut=0"}
    path = write_video(tmp_path / f"long.{suffix}", 600, gop=gop, options=options)
    ref = straight_decode(path)
    seen = _counting_decodes(monkeypatch)
    with VideoReader(path) as r:
        assert r.frame_index().approximate == (suffix == "mp4")
        np.testing.assert_array_equal(r.get_frames([590, 100]), ref[[590, 100]])
    assert len(seen) <= 2 * gop + 2 * bframes  # before: 491, every frame from 100's keyframe to 590
