"""`vmae classify` and `vmae embed` end to end: real tiny checkpoints, real video files, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from .conftest import REPO, run_vmae, vmae_in_process
from .models import TINY_PREPROCESSOR, tiny_classifier, tiny_pretraining
from .videos import write_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five small videos of different lengths and sizes, one random-bytes file, one text file."""
    root = tmp_path_factory.mktemp("corpus")
    sizes = [(64, 48), (48, 64), (80, 40), (64, 48), (34, 26)]
    for k, (size, n) in enumerate(zip(sizes, [30, 12, 50, 3, 20], strict=True)):
        write_video(root / f"v{k}.mp4", n, size=size, gop=5)
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("cls"))


vmae = vmae_in_process


def videos(corpus):
    return sorted(str(p) for p in corpus.glob("*.mp4"))


def test_jsonl_one_line_per_input_in_order_with_failures(capsys, corpus, classifier):
    code, out, err = vmae(capsys, "classify", corpus, "--model", classifier, "--jsonl", "-k", "2")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # some inputs failed, every other one reported
    assert [r["path"] for r in records] == videos(corpus)  # folder searched, video extensions only, sorted
    bad = [r for r in records if not r["ok"]]
    assert [os.path.basename(r["path"]) for r in bad] == ["broken.mp4"]
    assert set(bad[0]["error"]) == {"type", "message"} and "broken.mp4" in bad[0]["error"]["message"]
    assert "broken.mp4" in err and "Traceback" not in err
    for r in records:
        if r["ok"]:
            assert set(r) == {"path", "ok", "predictions", "views", "frames", "times", "crop", "provenance"}
            assert [set(p) for p in r["predictions"]] == [{"label", "index", "score"}] * 2
            assert r["predictions"][0]["score"] >= r["predictions"][1]["score"]
            assert r["views"] == 1 and len(r["frames"]) == 1 and len(r["frames"][0]) == 4


def test_json_array_equals_jsonl_and_out_file_is_atomic(capsys, tmp_path, corpus, classifier):
    good = [str(corpus / "v1.mp4"), str(corpus / "v2.mp4")]
    _, jsonl, _ = vmae(capsys, "classify", *good, "--model", classifier, "--jsonl")
    code, array, _ = vmae(capsys, "classify", *good, "--model", classifier, "--json")
    assert code == 0 and json.loads(array) == [json.loads(line) for line in jsonl.splitlines()]
    code, out, _ = vmae(capsys, "classify", *good, "--model", classifier, "--out", tmp_path / "preds.json")
    assert code == 0 and out == ""
    assert json.loads((tmp_path / "preds.json").read_text()) == json.loads(array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.json"]  # no journal left behind


def test_scores_match_transformers_on_the_same_frames(capsys, corpus, classifier):
    """The whole path (decode, sample, preprocess, model, softmax) against transformers' processor + model."""
    import transformers

    from vmae_cli.video.reader import VideoReader

    path = str(corpus / "v2.mp4")
    code, out, _ = vmae(
        capsys, "classify", path, "--model", classifier, "--json", "-k", "3", "--dtype", "fp32"
    )
    record = json.loads(out)[0]
    with VideoReader(path) as reader:
        frames = reader.get_frames(record["frames"][0])
    processor = transformers.VideoMAEImageProcessor(**{k: v for k, v in TINY_PREPROCESSOR.items()
                                                       if k != "image_processor_type"})  # fmt: skip
    model = transformers.VideoMAEForVideoClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        probs = model(**processor(list(frames), return_tensors="pt")).logits.softmax(-1)[0]
    for p in record["predictions"]:
        assert abs(p["score"] - float(probs[p["index"]])) < 2e-3
    assert record["predictions"][0]["index"] == int(probs.argmax())


def test_frames_has_one_row_per_clip_even_when_clips_coincide(capsys, corpus, classifier):
    """A video shorter than one window gives identical clips: "frames" still lists each (views = rows x crops)."""
    path = str(corpus / "v3.mp4")  # 3 frames: every 4-frame window is [0, 0, 0, 0]
    _, out, _ = vmae(
        capsys, "classify", path, "--model", classifier, "--json", "--clips", "3", "--crops", "3"
    )
    record = json.loads(out)[0]
    assert record["views"] == 9 and record["frames"] == [[0, 0, 0, 0]] * 3


def test_multi_view_and_timeline(capsys, corpus, classifier):
    path = str(corpus / "v2.mp4")  # 50 frames at 25 fps = 2 s
    _, out, _ = vmae(capsys, "classify", path, "--model", classifier, "--json", "--clips", "3", "--crops", "3",
                     "--batch-size", "4")  # fmt: skip
    record = json.loads(out)[0]
    assert record["views"] == 9 and len(record["frames"]) == 3
    assert record["frames"][0][0] == 0 and record["frames"][-1][-1] == 48  # windows spread over the video
    _, out, _ = vmae(capsys, "classify", path, "--model", classifier, "--json", "--timeline", "--window", "0.8",
                     "--hop", "0.5")  # fmt: skip
    record = json.loads(out)[0]
    starts = [s["start"] for s in record["segments"]]
    assert starts == [0.0, 0.5, 1.0, 1.2] and record["segments"][-1]["end"] == 2.0
    assert all(len(s["predictions"]) == 3 for s in record["segments"])
    _, table, _ = vmae(capsys, "classify", path, "--model", classifier, "--timeline")
    assert "start" in table and "0.00" in table


def test_stdin_paths_and_exit_code_zero(corpus, classifier):
    paths = [p for p in videos(corpus) if "broken" not in p]
    result = run_vmae("classify", "-", "--model", str(classifier), "--jsonl", input="\n".join(paths) + "\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == paths


def test_shards_cover_the_corpus_exactly_once(capsys, corpus, classifier):
    seen = []
    for i in range(3):
        _, out, _ = vmae(capsys, "classify", corpus, "--model", classifier, "--jsonl", "--shard", f"{i}/3")
        seen += [json.loads(line)["path"] for line in out.splitlines()]
    assert sorted(seen) == videos(corpus) and len(seen) == len(set(seen))


def test_torchrun_ranks_write_their_own_output(capsys, monkeypatch, tmp_path, corpus, classifier):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    vmae(capsys, "classify", corpus, "--model", classifier, "--out", tmp_path / "p.jsonl")
    lines = (tmp_path / "p.rank1of2.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == videos(corpus)[1::2]


def test_resume_keeps_finished_records_and_retries_failures(capsys, tmp_path, corpus, classifier):
    out = tmp_path / "preds.jsonl"
    paths = videos(corpus)
    kept = {"path": paths[0], "ok": True, "predictions": [{"label": "FROM-EARLIER-RUN", "index": 0, "score": 1.0}],
            "views": 1, "frames": [[0, 1, 2, 3]]}  # fmt: skip
    failed = {"path": paths[2], "ok": False, "error": {"type": "X", "message": "transient"}}
    (tmp_path / "preds.jsonl.partial").write_text(
        json.dumps(kept) + "\n" + json.dumps(failed) + '\n{"path": "torn'
    )
    code, _, _ = vmae(capsys, "classify", corpus, "--model", classifier, "--out", out, "--resume")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == paths
    assert records[0] == kept  # not recomputed
    assert records[2]["ok"] is True  # the failed one was tried again
    assert not (tmp_path / "preds.jsonl.partial").exists()


def test_resume_after_kill(tmp_path, corpus, classifier):
    """kill -9 a real run mid-way; --resume finishes it and loses nothing written before the kill."""
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(60):
        os.link(corpus / "v0.mp4", folder / f"clip{k:03d}.mp4")
    out = tmp_path / "preds.jsonl"
    args = [sys.executable, "-m", "vmae_cli", "classify", str(folder), "--model", str(classifier), "--out", str(out),
            "--batch-size", "1", "--workers", "1", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "preds.jsonl.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count('"path"') >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journaled = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    before = [r for r in journaled if "path" in r]  # the journal opens with the run's settings
    assert not out.exists() and 3 <= len(before) < 60
    result = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in after] == sorted(str(p) for p in folder.iterdir())
    assert after[: len(before)] == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-k", "0"], "--top-k"),
        (["--sampling", "random"], "must be window or uniform"),
        (["--crops", "2"], "'--crops': crops must be 1 (the center) or 3 (along the long side), got 2"),
        (["--crops", "0"], "'--crops': crops must be 1 (the center) or 3 (along the long side), got 0"),
        (["--json", "--jsonl"], "choose one of --json and --jsonl"),
        (["--resume"], "--resume needs --out"),
        (["--frames", "8"], "takes exactly 4 frames"),
        (["--device", "cuda"], None),
        (["--shard", "3/2"], "need 0 <= i < n"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, corpus, classifier, args, message):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = vmae(capsys, "classify", corpus / "v0.mp4", "--model", classifier, *args)
    assert code == 2 and "Traceback" not in err
    assert message is None or message in err


def test_offline_model_not_cached_is_one_line(corpus):
    result = run_vmae("classify", str(corpus / "v0.mp4"))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # the run cannot start
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "MCG-NJU/videomae-base-finetuned-kinetics" in lines[0]
        and "hf download" in lines[0]
    )


def test_classify_needs_a_classifier(capsys, tmp_path, corpus):
    code, _, err = vmae(capsys, "classify", corpus / "v0.mp4", "--model", tiny_pretraining(tmp_path))
    assert code == 2 and "no classifier head" in err and "vmae embed" in err


# ---- embed ------------------------------------------------------------------------------------------------
def _reference_features(path, model_dir):
    from vmae_cli import VideoMAEForVideoClassification
    from vmae_cli.inference.defaults import default_sampling
    from vmae_cli.inference.engine import preprocessor_for
    from vmae_cli.video.clips import load_clips

    model = VideoMAEForVideoClassification.from_pretrained(model_dir)
    spec = default_sampling(model.config, model.preprocessor_config)
    clips = load_clips(path, spec, preprocessor_for(model, model.preprocessor_config))
    with torch.no_grad():
        return model.features(clips.pixel_values).mean(0).numpy()


def test_embed_npy_rows_match_paths_and_failures_are_listed(capsys, tmp_path, corpus, classifier, cpu_bf16):
    out = tmp_path / "feats.npy"
    code, stdout, err = vmae(capsys, "embed", corpus, "--model", classifier, "--out", out)
    assert code == 1 and stdout == "" and "wrote 5 vector(s)" in err and "1 input(s) failed" in err
    feats = np.load(out)
    paths = (tmp_path / "feats.paths.txt").read_text().splitlines()
    assert feats.shape == (5, 64) and feats.dtype == np.float32 and len(paths) == 5
    assert "broken.mp4" not in " ".join(paths)
    errors = [json.loads(line) for line in (tmp_path / "feats.errors.jsonl").read_text().splitlines()]
    assert [os.path.basename(e["path"]) for e in errors] == ["broken.mp4"]
    for row, path in zip(feats, paths, strict=True):
        np.testing.assert_allclose(row, _reference_features(path, classifier), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "feats.errors.jsonl",
        "feats.npy",
        "feats.paths.txt",
    ]


@pytest.mark.parametrize(("fmt", "pool", "width"), [("npy", "auto", 64), ("npz", "mean", 64),
                                                  ("safetensors", "none", 32 * 64)])  # fmt: skip
def test_embed_with_every_input_failed_writes_no_rows_of_the_models_width(capsys, tmp_path, corpus, classifier,
                                                                         fmt, pool, width):  # fmt: skip
    """A shard whose inputs all failed stacks with the others: (0, width), not (0, 0)."""
    out = tmp_path / f"feats.{fmt}"
    code, _, err = vmae(
        capsys, "embed", corpus / "broken.mp4", "--model", classifier, "--out", out, "--pool", pool
    )
    assert code == 1 and "wrote 0 vector(s)" in err and "1 input(s) failed" in err
    if fmt == "npy":
        feats = np.load(out)
    elif fmt == "npz":
        feats = np.load(out)["embeddings"]
    else:
        from safetensors.numpy import load_file

        feats = load_file(out)["embeddings"]
    assert feats.shape == (0, width) and feats.dtype == np.float32
    assert (tmp_path / "feats.paths.txt").read_text() == ""


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "jsonl"])
def test_embed_other_formats_hold_the_same_vectors(capsys, tmp_path, corpus, classifier, fmt):
    good = [str(corpus / "v1.mp4"), str(corpus / "v2.mp4")]
    vmae(capsys, "embed", *good, "--model", classifier, "--out", tmp_path / "ref.npy")
    reference = np.load(tmp_path / "ref.npy")
    out = tmp_path / f"feats.{fmt}"
    assert vmae(capsys, "embed", *good, "--model", classifier, "--out", out)[0] == 0
    if fmt == "npz":
        data = np.load(out)
        feats, paths = data["embeddings"], list(data["paths"])
    elif fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(out), "np") as f:
            feats, paths = f.get_tensor("embeddings"), json.loads(f.metadata()["paths"])
    else:
        records = [json.loads(line) for line in out.read_text().splitlines()]
        feats, paths = np.array([r["embedding"] for r in records], np.float32), [r["path"] for r in records]
    assert paths == good
    np.testing.assert_allclose(feats, reference, atol=1e-6)


def test_embed_pooling_modes_and_pretraining_checkpoint(capsys, tmp_path, corpus, cpu_bf16):
    from vmae_cli import VideoMAEModel

    pre = tiny_pretraining(tmp_path / "pre")
    path = corpus / "v1.mp4"
    vmae(capsys, "embed", path, "--model", pre, "--out", tmp_path / "mean.npy")
    vmae(capsys, "embed", path, "--model", pre, "--out", tmp_path / "all.npy", "--pool", "none")
    tokens = np.load(tmp_path / "all.npy")
    assert tokens.shape == (1, 32 * 64)  # every token of the 2x4x4 grid, 64 wide
    mean = np.load(tmp_path / "mean.npy")
    np.testing.assert_allclose(
        mean[0], tokens.reshape(32, 64).mean(0), atol=1e-5
    )  # mean of the encoder's tokens
    assert VideoMAEModel.from_pretrained(pre).layernorm is not None  # pre-training encoders end with a norm


def test_embed_resume_continues_from_the_journal(capsys, tmp_path, corpus, classifier):
    paths = [p for p in videos(corpus) if "broken" not in p]
    out = tmp_path / "feats.npy"
    vmae(capsys, "embed", *paths, "--model", classifier, "--out", tmp_path / "ref.npy")
    reference = np.load(tmp_path / "ref.npy")
    # A journal as a killed run leaves it: two complete rows, then half a row and no index line for it.
    journal = tmp_path / "feats.npy.partial"
    journal.mkdir()
    fake = np.full((2, 64), 7.0, np.float32)  # marks rows that must be kept, not recomputed
    (journal / "rows.f32").write_bytes(fake.tobytes() + b"\x00" * 100)
    (journal / "index.jsonl").write_text(
        "".join(json.dumps({"path": p, "row": k, "shape": [64]}) + "\n" for k, p in enumerate(paths[:2]))
    )
    code, _, _ = vmae(capsys, "embed", *paths, "--model", classifier, "--out", out, "--resume")
    feats = np.load(out)
    assert code == 0 and feats.shape == reference.shape == (5, 64)
    np.testing.assert_array_equal(feats[:2], fake)
    np.testing.assert_allclose(feats[2:], reference[2:], atol=1e-6)
    assert not journal.exists()


def test_embed_jsonl_resume_keeps_the_journal_and_a_failed_load_leaves_nothing(
    capsys, tmp_path, corpus, classifier
):
    paths = [p for p in videos(corpus) if "broken" not in p]
    out = tmp_path / "feats.jsonl"
    vmae(capsys, "embed", *paths[:2], "--model", classifier, "--out", out)
    out.rename(tmp_path / "feats.jsonl.partial")  # as a killed run leaves it: two finished records
    kept = [json.loads(line) for line in (tmp_path / "feats.jsonl.partial").read_text().splitlines()]
    code, _, err = vmae(capsys, "embed", *paths, "--model", classifier, "--out", out, "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == paths and records[:2] == kept
    # a model that cannot load: one line, and no journal or output appears
    fresh = tmp_path / "new" / "feats.npy"
    code, _, err = vmae(capsys, "embed", paths[0], "--model", tmp_path / "no-such-model", "--out", fresh)
    assert code != 0 and "Traceback" not in err
    assert not fresh.exists() and not fresh.with_name("feats.npy.partial").exists()


def test_embed_resume_refuses_a_journal_made_with_other_settings(capsys, tmp_path, corpus, classifier):
    out = tmp_path / "feats.npy"
    code, _, _ = vmae(
        capsys, "embed", corpus / "v0.mp4", "--model", classifier, "--out", out, "--pool", "mean"
    )
    assert code == 0
    journal = tmp_path / "feats.npy.partial"  # as a killed run with --pool token0 would leave it
    journal.mkdir()
    (journal / "settings.json").write_text(json.dumps({"model": str(classifier), "pool": "token0"}))
    code, _, err = vmae(capsys, "embed", corpus / "v0.mp4", "--model", classifier, "--out", out, "--resume")
    assert code == 2 and "pool 'token0'" in err and "Traceback" not in err
    assert (journal / "settings.json").exists()  # the interrupted run's journal is left as it was


def test_a_resumed_journal_keeps_earlier_records_at_every_moment(tmp_path):
    """Records an interrupted run finished are journaled before any new work, not when their turn comes in
    input order: a second kill, while an earlier input is still being computed, loses none of them."""
    from vmae_cli.inference.writers import RecordWriter, finished_records

    out = tmp_path / "preds.jsonl"
    done = {"c.mp4": {"path": "c.mp4", "ok": True, "predictions": []}}
    writer = RecordWriter(out, "jsonl", done=done)
    writer.write({"path": "a.mp4", "ok": True, "predictions": []})  # new work, before c in input order
    assert set(finished_records(out)) == {"a.mp4", "c.mp4"}  # killed here: nothing lost
    writer.write({"path": "b.mp4", "ok": False, "error": {"type": "X", "message": "m"}})
    writer.write(done["c.mp4"])
    writer.close()
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["a.mp4", "b.mp4", "c.mp4"]
    assert not (tmp_path / "preds.jsonl.partial").exists()


def test_classify_a_bare_config_whose_weights_hold_a_head(capsys, corpus, tmp_path):
    """A transformers classifier with its default two labels (left out of config.json) and no `architectures`:
    only the weights say it is a classifier; classify reads them rather than refusing."""
    from .test_checkpoint import _hf_classifier

    _hf_classifier(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(TINY_PREPROCESSOR))
    code, out, err = vmae(capsys, "classify", corpus / "v0.mp4", "--model", tmp_path, "--json")
    assert code == 0, err
    (record,) = json.loads(out)
    assert sorted(p["label"] for p in record["predictions"]) == ["LABEL_0", "LABEL_1"]
    # a pre-training checkpoint with the same bare config is still refused, in one line
    pre = tiny_pretraining(tmp_path / "pre")
    config = json.loads((pre / "config.json").read_text())
    del config["architectures"]
    (pre / "config.json").write_text(json.dumps(config))
    code, _, err = vmae(capsys, "classify", corpus / "v0.mp4", "--model", pre)
    assert code != 0 and "no classifier head" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["embed", "evaluate"])
def test_crops_2_is_a_usage_error_everywhere(tmp_path, corpus, classifier, command):
    """Only the center crop and the paper's three crops exist: any other count stops before the model loads."""
    args = [str(corpus / "v0.mp4"), "--out", str(tmp_path / "f.npy")] if command == "embed" else [str(corpus)]
    result = run_vmae(command, *args, "--model", str(classifier), "--crops", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "crops must be 1 (the center) or 3 (along the long side), got 2" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_python_caller_classifies_a_folder_stops_and_resumes(tmp_path, corpus, classifier):
    """inference.batch without the CLI: records in input order into a journal; a caller that stops iterating
    keeps what is done, and the same call with resume=True does only the rest."""
    from vmae_cli.errors import UsageError
    from vmae_cli.inference.batch import classify_batch
    from vmae_cli.inference.options import RunOptions

    out, paths = tmp_path / "labels.jsonl", videos(corpus)
    opts = RunOptions(batch_size=2, workers=1)
    run = classify_batch([str(corpus)], classifier, options=opts, out=out, top_k=1)
    first = []
    for record in run:
        first.append(record)
        if len(first) == 2:
            break
    stopped = run.stop()
    kept = [r for r in first if r["ok"]]  # broken.mp4 comes first: failed inputs are tried again, not kept
    assert stopped.kept == len(kept) == 1 and stopped.total == len(paths)
    assert stopped.journal == tmp_path / "labels.jsonl.partial"
    assert "`resume`" in str(stopped) and not out.exists()
    with pytest.raises(UsageError, match="`resume`"):
        classify_batch([str(corpus)], classifier, options=RunOptions(frames=3), out=out, resume=True).start()
    run = classify_batch([str(corpus)], classifier, options=opts, out=out, top_k=1, resume=True)
    records = list(run)
    assert run.done == {r["path"] for r in kept}
    assert [r["path"] for r in records] == paths and records[1] == first[1] and not records[0]["ok"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert run.failures == 1 and paths[0] == str(corpus / "broken.mp4")
