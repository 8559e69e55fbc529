"""The batch engine streams views: many views of a large video cost the memory of one, with the same results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vmae_cli.models.modeling import VideoMAEForVideoClassification
from vmae_cli.video.clips import iter_views, load_clips, plan_clips
from vmae_cli.video.preprocess import Preprocessor
from vmae_cli.video.reader import VideoReader
from vmae_cli.video.sampling import SamplingSpec

from .conftest import REPO
from .conftest import vmae_in_process as vmae
from .models import TINY_PREPROCESSOR, build, tiny_classifier, tiny_config
from .videos import frame_number, write_video


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("cls"))


def test_views_are_the_same_in_one_pass_or_one_clip_per_pass(tmp_path, monkeypatch):
    """A decode budget smaller than the frames wanted splits the decoding, never what the model sees."""
    path = write_video(tmp_path / "clip.mp4", 80, gop=10)
    spec = SamplingSpec(frames=4, stride=4, clips=7, crops=3)
    pre = Preprocessor.from_dict(TINY_PREPROCESSOR)
    whole = load_clips(path, spec, pre, normalize=False)
    passes = []
    original = VideoReader.get_frames
    monkeypatch.setattr(VideoReader, "get_frames", lambda self, idx, **kw: passes.append(list(idx)) or original(self, idx, **kw))  # fmt: skip
    with VideoReader(path) as reader:
        clips = plan_clips(reader, spec)
        chunks = list(iter_views(reader, clips, pre, max_views=4, budget=1))
    assert [len(c) for c in chunks] == [6] * 3 + [3]  # whole clips (3 crops each) up to 4 views and past it
    assert torch.equal(torch.cat(chunks), whole.pixel_values)
    np.testing.assert_array_equal(clips.indices, whole.indices)
    # one clip's new frames per pass, each frame decoded once, in order
    assert all(len(p) <= 4 for p in passes) and sorted(sum(passes, [])) == sorted(set(clips.indices.ravel()))
    with VideoReader(path) as reader:  # the views hold the frames they name
        frames = reader.get_frames(clips.indices[::3].ravel())
    assert [frame_number(f) for f in frames] == clips.indices[::3].ravel().tolist()


def test_many_views_give_the_same_scores_whatever_the_batch(capsys, tmp_path, classifier):
    """The paper's 5x3 protocol: softmax averaged over 15 views, however they are batched, as computed here."""
    path = write_video(tmp_path / "v.mp4", 60, size=(80, 40), gop=8)
    records = []
    for batch in ("1", "4", "64"):
        code, out, err = vmae(capsys, "classify", path, "--model", classifier, "--json", "--dtype", "fp32",
                              "--clips", "5", "--crops", "3", "-b", batch)  # fmt: skip
        assert code == 0, err
        records.append(json.loads(out)[0])
    assert records[0] == records[1] == records[2] and records[0]["views"] == 15
    model = VideoMAEForVideoClassification.from_pretrained(classifier)
    spec = SamplingSpec(frames=4, stride=4, clips=5, crops=3)
    x = load_clips(path, spec, Preprocessor.from_dict(TINY_PREPROCESSOR)).pixel_values
    with torch.no_grad():
        expected = model(x).logits.softmax(-1).mean(0)
    for p in records[0]["predictions"]:
        assert abs(p["score"] - float(expected[p["index"]])) < 1e-5


def test_embed_averages_many_views(capsys, tmp_path, classifier):
    path = write_video(tmp_path / "v.mp4", 60, size=(80, 40), gop=8)
    code, _, err = vmae(capsys, "embed", path, "--model", classifier, "--out", tmp_path / "f.npy", "--dtype", "fp32",
                        "--clips", "4", "--crops", "3", "-b", "5")  # fmt: skip
    assert code == 0, err
    model = VideoMAEForVideoClassification.from_pretrained(classifier)
    spec = SamplingSpec(frames=4, stride=4, clips=4, crops=3)
    x = load_clips(path, spec, Preprocessor.from_dict(TINY_PREPROCESSOR)).pixel_values
    with torch.no_grad():
        expected = model.features(x).mean(0).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "f.npy")[0], expected, atol=1e-5)


def _peak_rss_mb(*args: str) -> float:
    """Peak resident memory of one `vmae` process (this child alone, from wait4), in MB."""
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "vmae_cli", *args], cwd=REPO, stdout=sink,
                                stderr=subprocess.PIPE)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == 0, err
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def test_memory_of_many_views_is_that_of_one(tmp_path):
    """300 clips x 3 crops of an 8 s video for a model that sees 224x224 pictures (as the Hub's do): before,
    all 900 views were held at once (900 x 0.6 MB of uint8), now they stream through the model a batch at a
    time. The model is tiny (2 layers, 64 wide) so that the views, not the weights, would fill the memory."""
    size = {"shortest_edge": 224}, {"height": 224, "width": 224}
    preprocessor = {**TINY_PREPROCESSOR, "size": size[0], "crop_size": size[1]}
    config = tiny_config(use_mean_pooling=True, image_size=224, patch_size=32, id2label={0: "a", 1: "b"})
    model = build(VideoMAEForVideoClassification, config, tmp_path / "model", preprocessor=preprocessor)
    path = write_video(tmp_path / "v.mp4", 200, size=(320, 240), gop=25)
    common = [str(path), "--model", str(model), "--json", "--dtype", "fp32", "--threads", "1", "-b", "1"]
    one = _peak_rss_mb("classify", *common, "--clips", "1")
    many = _peak_rss_mb("classify", *common, "--clips", "300", "--crops", "3")
    print(f"peak RSS: --clips 1 {one:.0f} MB, --clips 300 --crops 3 {many:.0f} MB")
    assert many <= 1.5 * one, (one, many)
