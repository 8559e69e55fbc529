"""What runs write, under attack and faults: outputs never destroy inputs or foreign files, never hold
NaN, never mix two runs, and an interrupt says how to continue. Real videos, real label sets, real processes
where the behaviour is about the process (signals, locks, crashes)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, vmae_in_process
from .models import TINY_PREPROCESSOR, tiny_classifier
from .videos import write_video

LABELS = Path(__file__).resolve().parents[1] / "src" / "vmae_cli" / "labels"
vmae = vmae_in_process


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript, jq and other strict parsers do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def strict_lines(text: str) -> list:
    return [strict_json(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    """A tiny classifier with the real Kinetics-400 label set."""
    labels = json.loads((LABELS / "k400.json").read_text())
    labels = list(labels.values()) if isinstance(labels, dict) else labels
    return tiny_classifier(tmp_path_factory.mktemp("k400"), labels=tuple(labels))


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    labels = json.loads((LABELS / "ssv2.json").read_text())
    labels = list(labels.values()) if isinstance(labels, dict) else labels
    return tiny_classifier(tmp_path_factory.mktemp("ssv2"), labels=tuple(labels))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for k in range(3):
        write_video(root / f"c{k}.mp4", 40 + 10 * k, size=(64, 48), gop=5)
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory, clips):
    """20 inputs (hard links of one clip): a run long enough to interrupt or to collide with."""
    root = tmp_path_factory.mktemp("many")
    for k in range(20):
        os.link(clips / "c0.mp4", root / f"clip{k:03d}.mp4")
    return root


def _video_copy(clips, tmp_path) -> Path:
    video = tmp_path / "x.mp4"
    video.write_bytes((clips / "c1.mp4").read_bytes())
    return video


# ---- --out never destroys an input or a file vmae did not write -----------------------------------------------
@pytest.mark.parametrize(
    "make_out, extra",
    [
        (lambda v: v, ["--jsonl"]),  # the very path
        (lambda v: v, ["--json"]),
        (lambda v: Path(os.path.relpath(v.parent)) / "." / v.name, ["--jsonl"]),  # ./x.mp4 against x.mp4
        (lambda v: _link(v, "hard.json", os.link), []),  # a hard link: the same inode
        (lambda v: _link(v, "soft.json", os.symlink), []),  # a symbolic link to the input
    ],
    ids=["same-path", "same-path-json", "relative-dot", "hard-link", "symlink"],
)
@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
def test_classify_out_naming_an_input_is_refused(capsys, clips, k400, tmp_path, make_out, extra, force):
    video = _video_copy(clips, tmp_path)
    before = video.read_bytes()
    out = make_out(video)
    code, stdout, err = vmae(capsys, "classify", video, "--model", k400, "--out", out, *extra,
                             *(["--force"] if force else []))  # fmt: skip
    assert code == 2 and "is the input" in err and err.count("\n") == 1, err
    assert video.read_bytes() == before and stdout == ""


def _link(video: Path, name: str, how) -> Path:
    link = video.with_name(name)
    how(video, link)
    return link


def test_embed_out_naming_an_input_is_refused(capsys, clips, k400, tmp_path):
    video = _video_copy(clips, tmp_path)
    before = video.read_bytes()
    for args in (["--format", "npy", "--out", video], ["--format", "npy", "--out", video, "--force"]):
        code, _, err = vmae(capsys, "embed", video, "--model", k400, *args)
        assert code == 2 and "is the input" in err, err
    # a companion file (X.paths.txt) that is an input: an input named like the index of --out
    index = tmp_path / "feats.paths.txt"
    os.link(video, index)
    code, _, err = vmae(capsys, "embed", index, "--model", k400, "--out", tmp_path / "feats.npy")
    assert code == 2 and "is the input" in err, err
    assert video.read_bytes() == before and not (tmp_path / "feats.npy").exists()


def test_a_file_vmae_did_not_write_needs_force_and_its_own_outputs_do_not(capsys, clips, k400, tmp_path):
    video = str(clips / "c0.mp4")
    notes = tmp_path / "notes.json"
    notes.write_text("my notes, not a vmae output\n")
    code, _, err = vmae(capsys, "classify", video, "--model", k400, "--out", notes)
    assert code == 2 and "vmae did not write" in err and "--force" in err
    assert notes.read_text() == "my notes, not a vmae output\n"
    code, _, _ = vmae(capsys, "classify", video, "--model", k400, "--out", notes, "--force")
    assert code == 0 and strict_json(notes.read_text())[0]["path"] == video
    # a vmae output (and an empty file) is replaced without --force
    assert vmae(capsys, "classify", video, "--model", k400, "--out", notes)[0] == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert vmae(capsys, "classify", video, "--model", k400, "--out", empty)[0] == 0
    # embed: a user's .npy without vmae's index beside it, a foreign journal folder, a binary index
    mine = tmp_path / "mine.npy"
    np.save(mine, np.ones((2, 3), np.float32))
    code, _, err = vmae(capsys, "embed", video, "--model", k400, "--out", mine)
    assert code == 2 and "vmae did not write" in err and np.load(mine).shape == (2, 3)
    (tmp_path / "feats.npy.partial").mkdir()
    (tmp_path / "feats.npy.partial" / "thesis.tex").write_text("years of work")
    code, _, err = vmae(capsys, "embed", video, "--model", k400, "--out", tmp_path / "feats.npy")
    assert code == 2 and "feats.npy.partial exists and is a folder" in err
    assert (tmp_path / "feats.npy.partial" / "thesis.tex").exists()
    (tmp_path / "e.paths.txt").write_bytes(b"\x00\x01binary")
    code, _, err = vmae(capsys, "embed", video, "--model", k400, "--out", tmp_path / "e.npy")
    assert code == 2 and "e.paths.txt exists" in err
    for fmt in ("npy", "npz", "safetensors", "jsonl"):  # each of embed's own outputs is replaced
        out = tmp_path / f"own.{fmt}"
        assert vmae(capsys, "embed", video, "--model", k400, "--out", out)[0] == 0
        code, _, err = vmae(capsys, "embed", video, "--model", k400, "--out", out)
        assert code == 0, err


# ---- embed's format ---------------------------------------------------------------------------------------------
def test_embed_unknown_suffix_is_a_usage_error(capsys, clips, k400, tmp_path):
    video = clips / "c0.mp4"
    for out in ("x.csv", "x"):
        code, _, err = vmae(capsys, "embed", video, "--model", k400, "--out", tmp_path / out)
        assert code == 2 and ".npy, .npz, .safetensors or .jsonl" in err and "--format" in err, err
    code, _, err = vmae(
        capsys, "embed", video, "--model", k400, "--out", tmp_path / "x.npz", "--format", "npy"
    )
    assert code == 2 and "does not fit" in err
    assert sorted(os.listdir(tmp_path)) == []
    code, _, _ = vmae(capsys, "embed", video, "--model", k400, "--out", tmp_path / "x.bin", "--format", "npy")
    assert code == 0 and np.load(tmp_path / "x.bin").shape == (1, 64)  # --format names the format


# ---- non-finite outputs ------------------------------------------------------------------------------------------
def _poisoned(folder: Path, base: Path, how: str) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(base, folder)
    if how == "image_std":
        pre = {**TINY_PREPROCESSOR, "image_std": [0.0, 0.0, 0.0]}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    elif how == "weights":
        weights = load_file(folder / "model.safetensors")
        name = next(k for k in weights if "attention.output.dense.weight" in k)
        weights[name][0, 0] = float("nan")
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    else:  # a NaN layer_norm_eps (Python's json reads and writes NaN)
        config = json.loads((folder / "config.json").read_text())
        config["layer_norm_eps"] = float("nan")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "how, named",
    [("image_std", "image_std"), ("weights", "weight tensors"), ("layer_norm_eps", "layer_norm_eps")],
)
def test_a_model_that_produces_nan_gives_error_records_and_strict_json(
    capsys, clips, k400, tmp_path, how, named
):
    model = _poisoned(tmp_path / "model", k400, how)
    videos = [str(clips / "c0.mp4"), str(clips / "c1.mp4")]
    code, out, err = vmae(capsys, "classify", *videos, "--model", model, "--jsonl")
    assert code in (1, 2) and named in err and "Traceback" not in err, err
    if code == 1:  # the model loads: every input is an error record that names the cause
        records = strict_lines(out)
        assert [r["path"] for r in records] == videos and not any(r["ok"] for r in records)
        assert all("NaN" in r["error"]["message"] and named in r["error"]["message"] for r in records)
    code, out, err = vmae(capsys, "classify", *videos, "--model", model, "--json")
    assert code in (1, 2) and (code == 2 or len(strict_json(out)) == 2)
    feats = tmp_path / "feats.jsonl"
    code, _, err = vmae(capsys, "embed", *videos, "--model", model, "--out", feats)
    assert code in (1, 2) and named in err
    if code == 1:
        assert [r["ok"] for r in strict_lines(feats.read_text())] == [False, False]
    code, _, err = vmae(capsys, "embed", *videos, "--model", model, "--out", tmp_path / "feats.npy")
    if code == 1:
        assert len(np.load(tmp_path / "feats.npy")) == 0
        assert len(strict_lines((tmp_path / "feats.errors.jsonl").read_text())) == 2
    labelled = tmp_path / "labelled"
    for label, video in zip(("abseiling", "air drumming"), videos, strict=True):
        (labelled / label).mkdir(parents=True)
        os.link(video, labelled / label / "clip.mp4")
    code, out, err = vmae(capsys, "evaluate", labelled, "--model", model, "--json")
    assert code in (1, 2) and named in err
    if code == 1:  # both videos are failed inputs, not predictions of NaN scores
        result = strict_json(out)
        assert result["count"] == 0 and len(result["failed"]) == 2


def test_json_writer_refuses_non_finite_numbers_naming_where():
    from vmae_cli.errors import VmaeError
    from vmae_cli.inference.writers import dumps

    assert strict_json(dumps({"a": [1.0, 2.5]})) == {"a": [1.0, 2.5]}
    with pytest.raises(VmaeError, match=r"predictions\[0\]\.score is nan"):
        dumps({"predictions": [{"score": float("nan")}]})


# ---- one run per output -----------------------------------------------------------------------------------------
def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmae_cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(check, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _records(journal: Path) -> int:
    try:
        return journal.read_text().count('"path"')
    except OSError:
        return 0


def _started(command: str, many: Path, model: Path, out: Path) -> tuple[subprocess.Popen, list[str]]:
    """A run over `many` in a child process, once its journal holds two records: (the process, its args)."""
    args = [
        command,
        str(many),
        "--model",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--workers",
        "1",
    ]
    proc = _start(*args)
    _wait_for(lambda: _records(out.with_name(out.name + ".partial")) >= 2, proc)
    return proc, args


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_a_second_run_with_the_same_out_is_refused_and_the_first_is_intact(
    capsys, many, k400, tmp_path, command
):
    out = tmp_path / ("preds.jsonl" if command == "classify" else "feats.jsonl")
    first, args = _started(command, many, k400, out)
    code, _, err = vmae(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and str(out) in err and f"pid {first.pid}" in err, err
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert [r["path"] for r in strict_lines(out.read_text())] == sorted(str(p) for p in many.iterdir())


def test_the_lock_goes_with_a_killed_run(capsys, many, k400, tmp_path):
    out = tmp_path / "preds.jsonl"
    victim, args = _started("classify", many, k400, out)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    code, _, err = vmae(capsys, *args, "--resume")
    assert code == 0, err
    assert len(strict_lines(out.read_text())) == 20


# ---- Ctrl-C, and --resume with the same settings only -----------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, many, k400):
    """A classify run with the paper's K400 protocol (5 clips x 3 crops) stopped by Ctrl-C (SIGINT to its
    process group, as a terminal sends it) after a few inputs: (its stderr, its exit code, the folder)."""
    root = tmp_path_factory.mktemp("interrupted")
    out = root / "preds.jsonl"
    # --sampling window: the K400 protocol, said explicitly until label sets decide sampling reliably
    args = ["classify", *sorted(str(p) for p in many.iterdir())[:10], "--model", str(k400), "--out", str(out),
            "--clips", "5", "--crops", "3", "--sampling", "window", "--batch-size", "4", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "vmae_cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    _wait_for(lambda: _records(root / "preds.jsonl.partial") >= 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return err, proc.returncode, root


def _copy_run(root: Path, tmp_path: Path) -> Path:
    journal = root / "preds.jsonl.partial"
    (tmp_path / journal.name).write_bytes(journal.read_bytes())
    return tmp_path / "preds.jsonl"


def test_ctrl_c_says_what_was_kept_and_the_command_that_continues(interrupted, many, k400, tmp_path):
    err, code, root = interrupted
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    kept = len(strict_lines((root / "preds.jsonl.partial").read_text())) - 1  # the first line: its settings
    assert f"{kept} of 10 input(s) done and kept in {root / 'preds.jsonl.partial'}" in err
    command = shlex.split(err.split("continue with: ")[1])
    assert command[0] == "vmae" and command[-1] == "--resume"
    out = _copy_run(root, tmp_path)
    command[command.index("--out") + 1] = str(out)
    done = subprocess.run([sys.executable, "-m", "vmae_cli", *command[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = strict_lines(out.read_text())
    assert [r["path"] for r in records] == sorted(str(p) for p in many.iterdir())[:10]
    assert {r["views"] for r in records} == {15}  # every record made with the same protocol


@pytest.mark.parametrize(
    "change, named",
    [
        (["--model", "SSV2"], "model"),
        (["--clips", "2"], "clips 5 (now 2)"),
        (["--crops", "1"], "crops 3 (now 1)"),
        (["-k", "3"], "top_k 5 (now 3)"),
    ],
)
def test_classify_resume_refuses_another_model_or_protocol(capsys, interrupted, many, k400, ssv2, tmp_path,
                                                          change, named):  # fmt: skip
    out = _copy_run(interrupted[2], tmp_path)
    journal = out.with_name(out.name + ".partial").read_text()
    args = {"--model": str(k400), "--clips": "5", "--crops": "3", "--sampling": "window"}
    for flag, value in zip(change[::2], change[1::2], strict=True):
        args[flag] = str(ssv2) if value == "SSV2" else value
    paths = sorted(str(p) for p in many.iterdir())[:10]
    code, _, err = vmae(
        capsys, "classify", *paths, "--out", out, "--resume", *[x for kv in args.items() for x in kv]
    )
    assert code == 2 and named in err and "--resume continues" in err and err.count("\n") == 1, err
    assert out.with_name(out.name + ".partial").read_text() == journal and not out.exists()


def test_classify_resume_compares_what_dtype_auto_means_here(capsys, interrupted, many, k400, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """A journal keeps the dtype --dtype auto resolved to (bf16 on a CPU with native bf16, fp32 on another):
    resumed with auto on the other kind of CPU it is refused, not mixed; with that dtype named it resumes; a
    journal written before, which says auto, resumes as it did."""
    out = _copy_run(interrupted[2], tmp_path)
    journal = out.with_name(out.name + ".partial")
    head, *rest = journal.read_text().splitlines(keepends=True)
    saved = json.loads(head)["settings"]["dtype"]
    assert saved in ("bfloat16", "float32")
    paths = sorted(str(p) for p in many.iterdir())[:10]
    args = [
        *paths,
        "--model",
        k400,
        "--clips",
        "5",
        "--crops",
        "3",
        "--sampling",
        "window",
        "--out",
        out,
        "--resume",
    ]
    monkeypatch.setenv("VMAE_CPU_BF16", "0" if saved == "bfloat16" else "1")  # the other kind of CPU
    code, _, err = vmae(capsys, "classify", *args)
    other = "float32" if saved == "bfloat16" else "bfloat16"
    assert code == 2 and f"dtype {saved!r} (now {other!r})" in err, err
    code, _, err = vmae(capsys, "classify", *args, "--dtype", "bf16" if saved == "bfloat16" else "fp32")
    assert code == 0, err
    assert {r["provenance"]["dtype"] for r in strict_lines(out.read_text())} == {saved}  # one precision
    out.unlink()
    journal.write_text(json.dumps({"settings": {**json.loads(head)["settings"], "dtype": "auto"}}) + "\n"
                       + "".join(rest))  # fmt: skip
    code, _, err = vmae(capsys, "classify", *args)
    assert code == 0, err


# ---- training run folders: the same command resumes, a lock, a full disk ----------------------------------------
TRAIN = ["--model-config", "tiny", "--config", "tiny", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("footage")
    for i in range(6):
        write_video(root / f"v{i}.mp4", 20 + 3 * i, size=(48, 40), gop=6)
    return root


def _pretrain(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmae_cli", "pretrain", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def _losses(run: Path) -> list[tuple]:
    lines = strict_lines((run / "metrics.jsonl").read_text())
    return [(m["step"], m["loss"], m["lr"]) for m in lines]


def test_pretrain_the_same_command_with_resume_continues_and_a_change_is_refused(capsys, footage, tmp_path):
    """Run with flags, SIGTERM, the exact same argv + --resume: the losses of the uninterrupted run. A flag
    that changes what the run learns is refused (naming it) and config.toml stays as it was."""
    args = [str(footage), *TRAIN, "--batch-size", "2", "--max-steps", "12", "--save-every", "4", "--seed", "3",
            "--lr", "0.003", "--set", "run.log_every=1"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    full = _pretrain(*args, "--out", str(whole))
    victim = _pretrain(*args, "--out", str(cut), env={"VMAE_STEP_DELAY": "0.3"})
    deadline = time.monotonic() + 120
    while not (cut / "checkpoints" / "step-4").exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()
        time.sleep(0.02)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 130 and "the same command and --resume" in err, err
    config = (cut / "config.toml").read_text()
    for change, named in (
        (["--batch-size", "4"], "optim.batch_size = 2 (this command: 4)"),
        (["--lr", "0.01"], "optim.lr = 0.003 (this command: 0.01)"),
        (["--config", "small"], "--resume continues"),  # another recipe: what it says differently is named
    ):
        argv = [*args, *change] if change[0] != "--config" else [*args[:3], "--config", "small", *args[5:]]
        code, _, err = vmae(capsys, "pretrain", *argv, "--out", cut, "--resume")
        assert code == 2 and named in err and err.count("\n") == 1, (change, err)
        assert (cut / "config.toml").read_text() == config
    resumed = _pretrain(*args, "--out", str(cut), "--resume", "--keep", "5")  # --keep may change
    assert resumed.wait(timeout=180) == 0, resumed.communicate()
    assert full.wait(timeout=180) == 0, full.communicate()
    assert _losses(cut) == _losses(whole) and len(_losses(whole)) == 12
    assert "keep = 5" in (cut / "config.toml").read_text()


def test_finetune_the_same_command_with_resume_is_accepted_and_a_change_is_refused(capsys, footage, tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for k in range(2):
            os.link(footage / f"v{k}.mp4", data / label / f"{k}.mp4")
    tiny_classifier(tmp_path / "init", labels=("a", "b"))
    args = ["finetune", data, "--model", tmp_path / "init", "--config", "tiny", "--out", tmp_path / "run",
            "--batch-size", "2", "--max-steps", "2", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]  # fmt: skip
    assert vmae(capsys, *args)[0] == 0
    code, _, err = vmae(capsys, *args, "--resume")
    assert code == 0, err
    code, _, err = vmae(capsys, *args, "--resume", "--batch-size", "4")
    assert code == 2 and "optim.batch_size = 2 (this command: 4)" in err, err


def test_a_second_training_run_with_the_same_out_is_refused(capsys, footage, tmp_path):
    run = tmp_path / "run"
    args = [str(footage), *TRAIN, "--max-steps", "400", "--out", str(run)]
    first = _pretrain(*args, env={"VMAE_STEP_DELAY": "0.05"})
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    metrics = (run / "metrics.jsonl").read_text()
    for extra in ([], ["--resume"]):
        code, _, err = vmae(capsys, "pretrain", *args, *extra)
        assert code == 2 and f"pid {first.pid}" in err and str(run) in err and err.count("\n") == 1, err
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130
    assert (run / "metrics.jsonl").read_text().startswith(metrics)


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _small_disk(path: Path) -> bool:
    """Mount a 1 MB tmpfs at `path` (root only); False where that is not possible."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("fault", ["file-size-limit", "full-disk"])
def test_no_room_for_a_checkpoint_is_one_line_and_leaves_no_temporary(footage, tmp_path, fault):
    args = [str(footage), *TRAIN, "--max-steps", "4", "--save-every", "2"]
    if fault == "full-disk":
        small = tmp_path / "small"
        if not _small_disk(small):
            pytest.skip("mounting a tmpfs needs root")
        run, kw = small / "run", {}
    else:
        run, kw = tmp_path / "run", {"preexec_fn": _limit_file_size(200_000)}
    try:
        proc = _pretrain(*args, "--out", str(run), **kw)
        _, err = proc.communicate(timeout=180)
        leftovers = sorted(p.name for p in (run / "checkpoints").iterdir())
    finally:
        if fault == "full-disk":
            subprocess.run(["umount", str(small)], check=True)
    assert proc.returncode == 1 and err.count("\n") == 1 and "internal error" not in err, err
    assert str(run / "checkpoints" / "step-2") in err and "needs about 1." in err and "MB" in err, err
    assert (
        ("no space left on the device" in err and " free" in err)
        if fault == "full-disk"
        else ("ulimit -f" in err)
    )
    assert "--resume" in err and leftovers == []  # no .step-2.tmp left behind


def test_metrics_count_non_finite_gradient_norms_instead_of_writing_them():
    """An fp16 step that the gradient scaler skips has an infinite norm: metrics.jsonl stays strict JSON."""
    from vmae_cli.inference.writers import dumps
    from vmae_cli.training.loop import _Window

    window = _Window()
    window.add(0.5, 2, 1.5)
    window.add(0.4, 2, float("inf"))
    record = strict_json(dumps(window.flush()))
    assert record["grad_norm"] == 1.5 and record["nonfinite_grad_norms"] == 1
