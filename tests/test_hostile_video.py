"""Hostile video inputs: pictures too large to hold, headers that lie about the size, links that lead nowhere.

Each case goes through the real `vmae classify` in a subprocess with the bundled model (models/motion), as a
user would meet it: exit 1, one line on stderr that says what is wrong, and memory that stays bounded.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib

import av
import numpy as np
import pytest

from vmae_cli.video.errors import FrameTooLargeError, VideoError, VideoNotFoundError
from vmae_cli.video.reader import MAX_PIXELS, VideoReader

from .conftest import REPO, vmae_in_process
from .videos import frame_number, frame_picture, write_video

GB = 1 << 30

# Runs a command and reports its peak RSS: RUSAGE_CHILDREN of this small launcher holds only its one child's
# (a child's ru_maxrss starts from its parent's RSS at fork, so pytest's own would hide the child's).
LAUNCH = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "peak": peak}))
"""


def classify_with_peak(path) -> dict:
    """`vmae classify PATH --model models/motion --jsonl` in a subprocess: exit code, output, peak RSS (bytes)."""
    command = [sys.executable, "-m", "vmae_cli", "classify", str(path), "--model", "models/motion", "--jsonl"]
    out = subprocess.run([sys.executable, "-c", LAUNCH, *command], capture_output=True, text=True, cwd=REPO,
                         timeout=300, check=True)  # fmt: skip
    return json.loads(out.stdout)


def write_png(path, width: int, height: int) -> os.PathLike:
    """A black RGB PNG, whatever its name says. Deflate over zero rows makes 16000 x 16000 a 3 MB file in about
    a second, where an encoder would first hold the 768 MB picture."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, rows = zlib.compressobj(1), bytes((1 + 3 * width) * 100)  # each row: filter byte 0, then pixels
    data = b"".join([*(deflate.compress(rows) for _ in range(height // 100)), deflate.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def one_error_line(code: int, stdout: str, stderr: str) -> str:
    """The failed input's one line on stderr (checked against its JSON record)."""
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr
    [record] = [json.loads(line) for line in stdout.splitlines()]
    assert record["ok"] is False and record["error"]["message"] in lines[0]
    return lines[0]


def classify(capsys, path) -> str:
    """`vmae classify PATH --model models/motion --jsonl` in this process; the error line."""
    return one_error_line(
        *vmae_in_process(capsys, "classify", path, "--model", REPO / "models/motion", "--jsonl")
    )


def test_a_huge_picture_is_refused_in_one_line_without_being_decoded(tmp_path):
    """A 3 MB PNG of 16000 x 16000 renamed .mp4 took 7.3 GB and 20-38 s: every sampled index held its own
    copy of the full picture. FFmpeg now refuses to allocate it (max_pixels), while probing already."""
    result = classify_with_peak(write_png(tmp_path / "huge.mp4", 16000, 16000))
    line = one_error_line(result["code"], result["stdout"], result["stderr"])
    assert (
        "frames of 16000x16000 pixels" in line and "over the limit" in line and "scale the video down" in line
    )
    assert result["peak"] < GB / 2, result["peak"]  # Python, torch and the model: nothing of the picture


def test_a_large_picture_under_the_limit_is_classified_within_1_gb(tmp_path):
    """8000 x 8000 (64 MP) is under the limit: each distinct frame is resized as it is decoded, so one full
    picture is held at a time, not one per sampled index (8 for this model: 1.95 GB before)."""
    assert 8000 * 8000 <= MAX_PIXELS
    result = classify_with_peak(write_png(tmp_path / "large.mp4", 8000, 8000))
    assert result["code"] == 0, result["stderr"]
    [record] = [json.loads(line) for line in result["stdout"].splitlines()]
    assert record["ok"] and record["frames"] == [[0] * 8]  # one frame, clamped by the sampler
    assert result["peak"] < GB, result["peak"]


def test_a_y4m_header_claiming_30000x30000_says_so(tmp_path, capsys):
    """FFmpeg refuses the size itself ("Picture size 30000x30000 is invalid"), but PyAV drops FFmpeg's log and
    said only "Device or resource busy"."""
    path = tmp_path / "huge.y4m"
    path.write_bytes(b"YUV4MPEG2 W30000 H30000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(10_000))
    line = classify(capsys, path)
    assert "frames of 30000x30000 pixels" in line and "over the limit" in line
    assert "busy" not in line


def test_a_symlink_loop_is_not_called_a_missing_file(tmp_path, capsys):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.symlink_to(b)
    b.symlink_to(a)
    line = classify(capsys, a)
    assert "symbolic link loop" in line and "no such file" not in line


def test_a_broken_symlink_names_its_target(tmp_path):
    link = tmp_path / "clip.mp4"
    link.symlink_to(tmp_path / "gone.mp4")
    with pytest.raises(VideoNotFoundError, match="broken symbolic link") as info:
        VideoReader(link)
    assert "gone.mp4" in str(info.value) and "\n" not in str(info.value)


def test_the_pixel_limit_is_a_typed_error_with_fields(tmp_path):
    """The header's size is checked before anything is decoded; the error survives a worker process."""
    path = write_video(tmp_path / "clip.mkv", 4, size=(64, 48))
    with pytest.raises(FrameTooLargeError) as info:
        VideoReader(path, max_pixels=64 * 48 - 1)
    error = info.value
    assert isinstance(error, VideoError) and (error.width, error.height, error.limit) == (64, 48, 64 * 48 - 1)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    with VideoReader(path, max_pixels=64 * 48) as r:  # the limit itself is allowed
        assert r.get_frames([3]).shape == (1, 48, 64, 3)


def test_larger_pictures_midway_are_refused_by_the_decoder(tmp_path):
    """A stream whose header gives a small size and whose later pictures are larger (joined renditions): the
    larger ones are not decoded at all (FFmpeg's max_pixels), and stand-ins are reported as for damage."""
    small = write_video(tmp_path / "a.ts", 12, size=(64, 48), gop=6)
    large = write_video(tmp_path / "b.ts", 12, size=(96, 64), gop=6, pts=[2000 + 40 * i for i in range(12)])
    joined = tmp_path / "joined.ts"
    joined.write_bytes(small.read_bytes() + large.read_bytes())
    with VideoReader(joined, max_pixels=64 * 48) as r, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = r.get_frames([0, 11, 12, 23])
    assert frames.shape == (4, 48, 64, 3)
    assert [frame_number(f) for f in frames] == [0, 11, 11, 11]  # the last small frame stands in
    assert any("did not decode" in str(w.message) for w in caught)
    assert np.array_equal(frames[2], frames[1])


def test_a_large_cover_picture_beside_the_video_does_not_count(tmp_path):
    """FFmpeg's refusal to probe a picture over the limit names only a size: when it is the cover art's (an
    attached picture, not the video), the video stream itself is within the limit and reads."""
    path = tmp_path / "with_cover.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        cover = out.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 128, 128, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((128, 128, 3), np.uint8), format="rgb24")
        picture.pts = 0
        for packet in [*cover.encode(picture), *cover.encode()]:
            out.mux(packet)
        for f in range(10):
            frame = av.VideoFrame.from_ndarray(frame_picture(f, 64, 48), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    with VideoReader(path, max_pixels=64 * 48) as r:  # the cover's 128 x 128 is over it
        assert (r.width, r.height) == (64, 48)
        assert [frame_number(f) for f in r.get_frames([9, 2])] == [9, 2]
