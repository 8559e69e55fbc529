"""Tiny test videos written with PyAV, and a way to read back which frame a picture is.

Frame f shows f in binary as BITS vertical bands (black = 0, white = 1, most significant bit on
the left), which survives lossy codecs, chroma subsampling, gray and 10-bit formats, and tells a
test exactly which frame came back.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 8


def frame_picture(f: int, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3) showing frame number f as bands."""
    bits = [(f >> (BITS - 1 - b)) & 1 for b in range(BITS)]
    cols = np.minimum(np.arange(width) * BITS // width, BITS - 1)
    row = np.array(bits, dtype=np.uint8)[cols] * 255
    img = np.repeat(row[None, :], height, axis=0)
    return np.repeat(img[:, :, None], 3, axis=2)


def frame_number(rgb: np.ndarray) -> int:
    """Read back the number from an upright uint8 (H, W, 3) picture made by frame_picture."""
    h, w, _ = rgb.shape
    lum = rgb.astype(np.float32).mean(axis=2)
    f = 0
    for b in range(BITS):
        lo, hi = b * w // BITS, (b + 1) * w // BITS
        band = lum[h // 4 : 3 * h // 4, lo + (hi - lo) // 4 : hi - (hi - lo) // 4]  # away from edges
        f = (f << 1) | int(band.mean() > 127)
    return f


def write_video(
    path: Path,
    num_frames: int,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    pix_fmt: str = "yuv420p",
    rate: int = 25,
    gop: int | None = None,
    rotation: int | None = None,
    pts: list[int] | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
    picture=frame_picture,
) -> Path:
    """Write frames 0..num_frames-1 (width x height). `pts` in 1/1000 s makes a variable-rate file (or one
    that starts late, or before 0: an MP4 hides frames before 0 behind an edit list). `picture(f, width,
    height)` draws frame f (default: its number as bands)."""
    width, height = size
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        src_fmt = "rgba" if pix_fmt in ("rgba", "argb", "yuva420p") else "rgb24"
        for f in range(num_frames):
            img = picture(f, width, height)
            if src_fmt == "rgba":
                img = np.concatenate([img, np.full((height, width, 1), 200, np.uint8)], axis=2)
            frame = av.VideoFrame.from_ndarray(img, format=src_fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[f], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio(path: Path, seconds: float = 0.5) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp2", rate=44100)
        samples = int(44100 * seconds)
        for start in range(0, samples, 1152):
            tone = (np.sin(np.arange(start, start + 1152) / 20.0) * 3000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16", layout="mono")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_with_cover(path: Path, seconds: float = 0.5) -> Path:
    """An .m4a with AAC audio and cover art: a one-picture "video" stream flagged as an attached picture."""
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=44100)
        cover = out.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(frame_picture(1, 32, 32), format="rgb24")
        picture.pts = 0
        for packet in [*cover.encode(picture), *cover.encode()]:
            out.mux(packet)
        for start in range(0, int(44100 * seconds), 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def straight_decode(path: Path, *, skip_errors: bool = False) -> np.ndarray:
    """Every frame, decoded from the start with no seeking: the ground truth (N, H, W, 3).
    `skip_errors`: packets that fail to decode (a damaged or cut-short file) are passed over."""
    with av.open(str(path)) as c:
        if not skip_errors:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        frames = []
        for packet in c.demux(video=0):
            try:
                frames += [f.to_ndarray(format="rgb24") for f in packet.decode()]
            except av.error.FFmpegError:
                pass
        return np.stack(frames)


# name -> (file name, write_video kwargs); all tiny so the whole set writes in about a second
GOOD = {
    "h264_mp4": ("h264.mp4", dict(num_frames=120, gop=10)),
    # b-adapt=0: B-frames whatever the content (x264 picks none for this pattern otherwise), b-pyramid: some
    # of them references
    "h264_bframes_mkv": (
        "h264b.mkv",
        dict(num_frames=60, gop=12, options={"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal"}),
    ),
    "mpeg4_avi": ("mpeg4.avi", dict(num_frames=30, codec="mpeg4", gop=8)),
    "vp9_webm": (
        "vp9.webm",
        dict(num_frames=20, codec="libvpx-vp9", gop=6, options={"deadline": "realtime", "cpu-used": "8"}),
    ),
    "mjpeg_avi": ("mjpeg.avi", dict(num_frames=12, codec="mjpeg", pix_fmt="yuvj420p")),
    "yuv444_mkv": ("yuv444.mkv", dict(num_frames=20, pix_fmt="yuv444p", gop=5)),
    "gray_ffv1_mkv": ("gray.mkv", dict(num_frames=20, codec="ffv1", pix_fmt="gray")),
    "10bit_mkv": ("10bit.mkv", dict(num_frames=20, pix_fmt="yuv420p10le", gop=5)),
    "rgba_png_mov": ("rgba.mov", dict(num_frames=6, codec="png", pix_fmt="rgba")),
    "argb_qtrle_mov": ("argb.mov", dict(num_frames=6, codec="qtrle", pix_fmt="argb")),
    "odd_97x61_mkv": ("odd.mkv", dict(num_frames=12, size=(97, 61), pix_fmt="yuv444p", gop=4)),
    # AVI stores no presentation times: with B-frames FFmpeg's guessed pts name the wrong frames
    "h264_bframes_avi": (
        "h264b.avi",
        dict(num_frames=30, gop=12, options={"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal"}),
    ),
    # MPEG-PS: timestamps only on some packets, interpolated differently after a seek
    "mpeg1_bframes_mpg": (
        "mpeg1b.mpg",
        dict(num_frames=30, codec="mpeg1video", size=(160, 120), gop=12, options={"bf": "2"}),
    ),
    # intra refresh: one IDR, then recovery points flagged as keyframes; after a seek to one, frames come
    # out only once the picture has recovered
    "intra_refresh_mkv": (
        "intra_refresh.mkv",
        dict(
            num_frames=30,
            size=(128, 96),
            options={"x264-params": "intra-refresh=1:keyint=12:bframes=0:scenecut=0"},
        ),
    ),
    "hevc_bframes_mp4": (
        "hevcb.mp4",
        dict(
            num_frames=30,
            codec="libx265",
            gop=12,
            options={"x265-params": "bframes=3:keyint=12:min-keyint=12:scenecut=0:log-level=error"},
        ),
    ),
    "av1_mkv": ("av1.mkv", dict(num_frames=20, codec="libsvtav1", gop=8, options={"preset": "12"})),
    "vp8_webm": (
        "vp8.webm",
        dict(num_frames=20, codec="libvpx", gop=6, options={"deadline": "realtime", "cpu-used": "8"}),
    ),
    "mpeg2_bframes_ts": (
        "mpeg2b.ts",
        dict(num_frames=30, codec="mpeg2video", size=(160, 120), gop=12, options={"bf": "2"}),
    ),
    "prores_mov": ("prores.mov", dict(num_frames=8, codec="prores_ks", pix_fmt="yuv422p10le")),
    "gif": ("anim.gif", dict(num_frames=10, codec="gif", pix_fmt="rgb8")),
    "one_frame_mp4": ("one.mp4", dict(num_frames=1)),
    "three_frames_mp4": ("three.mp4", dict(num_frames=3)),
}
_CACHE: dict[str, dict[str, Path]] = {}


def make_videos(root: Path) -> dict[str, Path]:
    """Write the GOOD set plus rotated and VFR files into root, once per session."""
    if str(root) in _CACHE:
        return _CACHE[str(root)]
    paths = {name: write_video(root / fname, **kw) for name, (fname, kw) in GOOD.items()}
    paths["rot90_mp4"] = write_video(root / "rot90.mp4", 8, size=(64, 32), rotation=90)
    paths["rot270_mp4"] = write_video(root / "rot270.mp4", 8, size=(64, 32), rotation=-90)
    vfr = np.cumsum([0] + [40 if i % 3 else 100 for i in range(1, 30)]).tolist()  # 40 ms and 100 ms gaps
    paths["vfr_mkv"] = write_video(root / "vfr.mkv", 30, pts=vfr, gop=7)
    paths["vfr_mp4"] = write_video(root / "vfr.mp4", 30, pts=vfr, gop=7)
    _CACHE[str(root)] = paths
    return paths


def remux_with_garbage(src: Path, dst: Path, bad_packets: set[int], seed: int = 0) -> Path:
    """Copy src to dst packet by packet, replacing the payload of packets number `bad_packets`
    (in file order) with random bytes: a corrupt packet mid-stream in an intact container."""
    rng = np.random.default_rng(seed)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(stream)
        for i, packet in enumerate(p for p in inp.demux(stream) if p.size):
            if i in bad_packets:
                junk = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                junk.pts, junk.dts, junk.time_base = packet.pts, packet.dts, packet.time_base
                junk.is_keyframe = packet.is_keyframe
                packet = junk
            packet.stream = out_stream
            out.mux(packet)
    return dst


def stream_mpegts(target, num_frames: int, *, rate: int = 25, size: tuple[int, int] = (64, 48)) -> float:
    """Serve frames 0..num_frames-1 as an H.264 MPEG-TS stream at real-time pace, as a camera would: to a URL
    (`tcp://127.0.0.1:PORT?listen=1` waits for one client), to stdout ("-") or to a binary file object. x264
    runs with zerolatency, so each frame leaves as soon as it is drawn. Returns time.monotonic() when frame 0
    left. Serve a URL from a subprocess: `python -c "from tests.videos import stream_mpegts; stream_mpegts(...)"`
    (PyAV holds the GIL while it waits for a client)."""
    import time

    width, height = size
    target = "pipe:1" if target == "-" else target
    # flush_packets: every packet leaves at once (else AVIO holds 32 KB: seconds of a tiny stream, in bursts)
    with av.open(target, "w", format="mpegts", options={"flush_packets": "1"}) as out:
        stream = out.add_stream("libx264", rate=rate, options={"tune": "zerolatency", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        start = None  # when frame 0 left: the encoder opens at the first frame, which can take a while
        for f in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_picture(f, width, height), format="rgb24")
            frame.pts, frame.time_base = f, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            start = start or time.monotonic()
            time.sleep(max(0.0, start + (f + 1) / rate - time.monotonic()))
        for packet in stream.encode():
            out.mux(packet)
    return start
