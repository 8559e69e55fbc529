"""Hostile inputs, tried as an attacker would (issue #13): absurd sizes in a model's files, files that are
not what their names say, list files from other tools, damaged videos, folders that cannot be read.

Each attack is a row: how to build it, the command, the exit code and a fragment of what the person
reads. Every row runs through the real CLI and must end without a traceback or an "internal error"; a
failure is one line on stderr that names the file and the field. A new feature adds its rows here, so it
is tried against the whole family.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vmae_cli.models.config import VideoMAEConfig

from .conftest import REPO, run_vmae, vmae_in_process
from .models import tiny_classifier
from .videos import remux_with_garbage, write_video

K400 = json.loads((REPO / "src" / "vmae_cli" / "labels" / "k400.json").read_text())
BOM = "\ufeff"


@dataclass
class Attack:
    name: str
    build: Callable[[Path, Path, Path], list]  # (tmp folder, model folder, video) -> CLI arguments
    code: int
    says: str  # a fragment of stderr (or, for a run that succeeds, of stdout)
    never: str = "internal error"  # a fragment that must not appear


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny classifier with the real Kinetics-400 labels, and a short video."""
    root = tmp_path_factory.mktemp("hostile")
    model = tiny_classifier(root / "model", labels=[K400[str(i)] for i in range(400)])
    return model, write_video(root / "clip.mp4", 24)


# ---- how attacks are built --------------------------------------------------------------------------------
def _copy(tmp: Path, model: Path) -> Path:
    folder = tmp / "model"
    shutil.copytree(model, folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def config(**changes) -> Callable:
    """`vmae classify` with a model whose config.json says `changes`."""

    def build(tmp, model, video):
        folder = _copy(tmp, model)
        _edit_json(folder / "config.json", **changes)
        return ["classify", video, "--model", folder, "--json"]

    return build


def preprocessor(text: str | None = None, **changes) -> Callable:
    """`vmae classify` with a model whose preprocessor_config.json is `text`, or says `changes`."""

    def build(tmp, model, video):
        folder = _copy(tmp, model)
        if text is not None:
            (folder / "preprocessor_config.json").write_text(text)
        if changes:
            _edit_json(folder / "preprocessor_config.json", **changes)
        return ["classify", video, "--model", folder, "--json"]

    return build


def int32_tensor(tmp, model, video):
    folder = _copy(tmp, model)
    state = load_file(folder / "model.safetensors")
    key = "videomae.encoder.layer.0.intermediate.dense.weight"
    state[key] = (state[key] * 1000).to(torch.int32)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return ["classify", video, "--model", folder, "--json"]


def label_gap(count: int) -> Callable:
    """K400's id2label without label 7; `count` 400 keeps the count with an extra label 400."""

    def build(tmp, model, video):
        labels = {k: v for k, v in K400.items() if k != "7"}
        if count == 400:
            labels["400"] = "one more"
        return config(id2label=labels, label2id={v: int(k) for k, v in labels.items()})(tmp, model, video)

    return build


def scratch_config(**changes) -> Callable:
    """`vmae pretrain --model-config FILE` (a model from scratch: no weights to compare with)."""

    def build(tmp, model, video):
        cfg = VideoMAEConfig.from_preset("tiny").to_dict()
        cfg.update(changes)
        (tmp / "cfg").mkdir()
        (tmp / "cfg" / "config.json").write_text(json.dumps(cfg))
        return ["pretrain", video, "--out", tmp / "run", "--model-config", tmp / "cfg" / "config.json",
                "--config", "tiny", "--workers", "0", "--device", "cpu"]  # fmt: skip

    return build


def pretrain_list(name: str, text: str, video_name: str) -> Callable:
    """`vmae pretrain` (one step) on a list file `name` holding `text` ({video} is the video's path)."""

    def build(tmp, model, video):
        clip = tmp / video_name
        shutil.copy(video, clip)
        (tmp / name).write_text(text.format(video=clip), encoding="utf-8")
        return ["pretrain", tmp / name, "--out", tmp / "run", "--model-config", "tiny", "--config", "tiny",
                "--max-steps", "1", "--batch-size", "1", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]  # fmt: skip

    return build


def evaluate_list(name: str, text: str, video_name: str = "clip.mp4", labels: str | None = None) -> Callable:
    """`vmae evaluate` on a list file `name` holding `text` ({video}: the video's path); `labels`: a label
    map (--labels) holding that text."""

    def build(tmp, model, video):
        clip = tmp / video_name
        shutil.copy(video, clip)
        (tmp / name).write_text(text.format(video=clip), encoding="utf-8")
        extra = []
        if labels is not None:
            (tmp / "labels.txt").write_text(labels, encoding="utf-8")
            extra = ["--labels", tmp / "labels.txt"]
        return ["evaluate", tmp / name, "--model", model, "--json", "--workers", "1", *extra]

    return build


def resume_binary(name: str) -> Callable:
    """`vmae classify --out preds.jsonl --resume` where `name` (the output or its journal) is binary."""

    def build(tmp, model, video):
        (tmp / name).write_bytes(bytes(range(128, 256)) * 8)
        return ["classify", video, "--model", model, "--out", tmp / "preds.jsonl", "--resume"]

    return build


K400_MAP = "\n".join(K400[str(i)] for i in range(400)) + "\n"

ATTACKS = [
    # ---- absurd sizes in config.json (#13 items 7, 8): refused before anything is built, naming the field
    Attack("layers-1e6", config(num_hidden_layers=1_000_000), 2,
           "config.json: invalid VideoMAE config: num_hidden_layers 1000000 is outside vmae's limits 1..256"),
    Attack("hidden-1e9", config(hidden_size=10**9), 2, "hidden_size 1000000000 is outside vmae's limits"),
    Attack("hidden-negative", config(hidden_size=-64), 2, "hidden_size -64 is outside vmae's limits 1..16384"),
    Attack("image-65536", config(image_size=65536), 2, "image_size 65536 is outside vmae's limits 1..4096"),
    Attack("frames-1e9", config(num_frames=10**9), 2, "num_frames 1000000000 is outside vmae's limits 1..1024"),
    Attack("patch-0", config(patch_size=0), 2, "patch_size 0 is outside vmae's limits"),
    Attack("tubelet-0", config(tubelet_size=0), 2, "tubelet_size 0 is outside vmae's limits"),
    Attack("heads-0", config(num_attention_heads=0), 2, "num_attention_heads 0 is outside vmae's limits"),
    Attack("frames-not-tubelets", config(num_frames=5), 2, "num_frames 5 is not a multiple of tubelet_size 2"),
    Attack("image-not-patches", config(image_size=36), 2, "image_size 36x36 is not a multiple of patch_size 8x8"),
    Attack("heads-not-dividing", config(num_attention_heads=3), 2,
           "hidden_size 64 is not divisible by num_attention_heads 3"),
    Attack("labels-1e9", config(num_labels=10**9), 2, "num_labels 1000000000 is outside vmae's limits"),
    Attack("tokens", config(image_size=4096, patch_size=4), 2, "2x1024x1024 = 2097152 tokens per clip, over the limit"),
    Attack("parameters", config(num_hidden_layers=256, hidden_size=16384, intermediate_size=65536), 2,
           "parameters, over the limit of 4e+09"),
    # ---- config.json against the weights' header (#13 item 7)
    Attack("layers-vs-weights", config(num_hidden_layers=3), 2,
           "config.json: num_hidden_layers is 3, but model.safetensors holds 2"),
    Attack("mlp-vs-weights", config(intermediate_size=100), 2,
           "config.json: intermediate_size is 100, but model.safetensors holds 128"),
    Attack("patch-vs-weights", config(patch_size=16), 2, "config.json: patch_size is (16, 16), but model.safetensors holds (8, 8)"),
    Attack("labels-vs-weights", label_gap(399), 2, "config.json: id2label is 399 labels, but model.safetensors holds 400"),
    Attack("int32-tensor", int32_tensor, 2,
           "model.safetensors: tensor videomae.encoder.layer.0.intermediate.dense.weight is I32, but VideoMAE weights are floating point"),
    # ---- a model from scratch (--model-config): the same bounds
    Attack("scratch-negative-width", scratch_config(hidden_size=-64), 2,
           "config.json: invalid VideoMAE config: hidden_size -64 is outside vmae's limits"),
    # ---- preprocessor_config.json (#13 items 8, 11)
    Attack("preprocessor-not-json", preprocessor("{not json"), 2,
           "preprocessor_config.json: not a valid JSON file (Expecting property name"),
    Attack("preprocessor-a-list", preprocessor("[1, 2]"), 2, "preprocessor_config.json: expected a JSON object"),
    Attack("crop-0", preprocessor(crop_size={"height": 0, "width": 0}), 2,
           "preprocessor_config.json: crop_size height 0 is not a whole number of pixels in 1..4096"),
    Attack("crop-512", preprocessor(crop_size={"height": 512, "width": 512}), 2,
           "preprocessor_config.json: crop_size 512x512 does not fit the model, which takes frames of 32x32"),
    Attack("resize-100000", preprocessor(size={"shortest_edge": 100000}), 2,
           "preprocessor_config.json: size shortest_edge 100000 is not a whole number of pixels in 1..4096"),
    Attack("mean-of-2", preprocessor(image_mean=[0.5, 0.5]), 2,
           "preprocessor_config.json: image_mean [0.5, 0.5] is not a number or a list of 3 numbers"),
    # ---- id2label with a gap (#13 item 11): transformers loads it, so vmae does, and says what is missing
    Attack("label-gap", label_gap(400), 0,
           "id2label names no label for output(s) 7 of the model's 400 (numbered 0..399), shown as LABEL_7; "
           "its label(s) for 400 belong to no output"),
    # ---- --resume of an output that vmae did not write (#13 item 8)
    Attack("resume-binary-out", resume_binary("preds.jsonl"), 2, "preds.jsonl exists and is a file that vmae did not write"),
    Attack("resume-binary-journal", resume_binary("preds.jsonl.partial"), 2, "preds.jsonl.partial exists and is a file that vmae did not write"),
    # ---- list files (#13 item 10): a byte-order mark, a comma in a plain list's path
    Attack("evaluate-csv-bom", evaluate_list("val.csv", BOM + "path,label\n{video},abseiling\n"), 0, '"count": 1'),
    Attack("evaluate-txt-comma", evaluate_list("val.txt", "{video} 0\n", "clip, one.mp4"), 0, '"count": 1'),
    Attack("evaluate-labels-bom", evaluate_list("val.txt", "{video} 0\n", labels=BOM + K400_MAP), 0, '"count": 1'),
    Attack("pretrain-list-bom", pretrain_list("list.txt", BOM + "{video}\n", "clip.mp4"), 0, "", never="skipped"),
    Attack("pretrain-txt-comma", pretrain_list("list.txt", "{video}\n", "clip, one.mp4"), 0, "", never="skipped"),
    Attack("pretrain-csv-original", pretrain_list("train.csv", "{video} 0\n", "clip.mp4"), 0, "", never="skipped"),
]  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(capsys, tmp_path, base, attack):
    model, video = base
    code, out, err = vmae_in_process(capsys, *attack.build(tmp_path, model, video))
    assert code == attack.code, err
    assert attack.says in (err if code else out + err), err
    assert attack.never not in err and "Traceback" not in err, err
    if code:
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("text", "says"), [("{not json", "not a valid JSON file (Expecting property name"),
                                           ("[1, 2]", "expected a JSON object, got list")])  # fmt: skip
def test_info_refuses_a_preprocessor_config_that_is_not_an_object(capsys, tmp_path, base, text, says):
    """`vmae info` read the file with a bare json.loads: an internal error (AttributeError, JSONDecodeError)."""
    model, video = base
    args = preprocessor(text)(tmp_path, model, video)
    code, out, err = vmae_in_process(capsys, "info", args[3])
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"preprocessor_config.json: {says}" in err


def test_refusals_name_file_field_value_and_what_fits(tmp_path, base):
    """The typed error behind the messages: a program can read the fields."""
    from vmae_cli.errors import FieldError
    from vmae_cli.models.modeling import VideoMAEForVideoClassification

    model, video = base
    config(num_hidden_layers=1_000_000)(tmp_path, model, video)
    with pytest.raises(FieldError) as e:
        VideoMAEForVideoClassification.from_pretrained(tmp_path / "model")
    assert (e.value.path, e.value.field, e.value.value, e.value.allowed) == (
        tmp_path / "model" / "config.json",
        "num_hidden_layers",
        1_000_000,
        "1..256",
    )


def test_a_mean_of_one_value_is_broadcast_like_a_number(capsys, tmp_path, base):
    """transformers' default (torchvision) backend broadcasts a 1-long image_mean/std; a number does the same."""
    model, video = base
    scores = []
    for value in ([0.45], 0.45, [0.45, 0.45, 0.45]):
        folder = tmp_path / str(len(scores))
        shutil.copytree(model, folder)
        _edit_json(folder / "preprocessor_config.json", image_mean=value, image_std=value)
        code, out, err = vmae_in_process(capsys, "classify", video, "--model", folder, "--json", "-k", "400")
        assert code == 0, err
        scores.append(json.loads(out)[0]["predictions"])
    assert scores[0] == scores[1] == scores[2]


# ---- process-level attacks: a real subprocess -------------------------------------------------------------
def test_paths_on_stdin_may_start_with_a_bom(base):
    model, video = base
    result = run_vmae("classify", "-", "--model", str(model), "--jsonl", input=f"{BOM}{video}\n{video}\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["ok"] for line in result.stdout.splitlines()] == [True, True]


def test_warnings_of_a_damaged_video_are_one_line_each_and_counted(tmp_path, base):
    """Corrupt packets in every GOP: each timeline window meets one. Python would print each warning with
    its source line; vmae prints one line per kind of message and counts the repeats."""
    model, _ = base
    clean = write_video(tmp_path / "clean.mp4", 300, gop=10)
    damaged = remux_with_garbage(clean, tmp_path / "damaged.mp4", set(range(1, 300, 10)))
    result = run_vmae(
        "classify", str(damaged), "--model", str(model), "--json", "--timeline", "--window", "0.5"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("WARNING: ") for line in lines), lines
    assert not any("Warning:" in line for line in lines)  # no `file.py:424: RuntimeWarning:` source lines
    assert len(set(lines)) == len(lines), lines  # nothing repeated
    assert any("skipped a corrupt packet" in line and "more like it)" in line for line in lines), lines
    assert len(lines) <= 4, lines  # two kinds of message, each once and once counted


def _without_root_file_access() -> None:
    """In the child: drop the capabilities that let root read any file (root owns the test's files, so a
    mode-000 folder then really cannot be listed), as an ordinary user would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_folder_that_cannot_be_listed_is_named_and_fails_the_run(tmp_path, base):
    """classify goes on with what it could list and exits 1; a training run refuses to start (exit 2)."""
    model, video = base
    videos, private = tmp_path / "videos", tmp_path / "videos" / "private"
    private.mkdir(parents=True)
    shutil.copy(video, videos / "a.mp4")
    shutil.copy(video, private / "b.mp4")
    private.chmod(0)
    preexec = _without_root_file_access if os.geteuid() == 0 else None
    try:
        classify, pretrain = (
            subprocess.run([sys.executable, "-m", "vmae_cli", *map(str, args)], capture_output=True, text=True,
                           cwd=REPO, preexec_fn=preexec, timeout=120)
            for args in (["classify", videos, "--model", model, "--jsonl"],
                         ["pretrain", videos, "--out", tmp_path / "run", "--model-config", "tiny", "--config", "tiny"])
        )  # fmt: skip
    finally:
        private.chmod(0o755)
    assert classify.returncode == 1, classify.stderr
    assert f"{private}: cannot list this folder (Permission denied)" in classify.stderr
    assert [json.loads(line)["path"] for line in classify.stdout.splitlines()] == [str(videos / "a.mp4")]
    assert pretrain.returncode == 2 and not (tmp_path / "run").exists(), pretrain.stderr
    assert (
        pretrain.stderr
        == f"error: {private}: cannot list this folder (Permission denied); fix its permissions or move it out\n"
    )


def _warn_three_times() -> None:
    for pts in (512, 1024, 1536):
        warnings.warn(f"clip7.mp4: skipped a corrupt packet at pts {pts}", RuntimeWarning, stacklevel=1)


def test_a_worker_process_counts_its_own_repeats_and_says_so_when_it_exits(tmp_path):
    """Data loaders decode in forked workers: what they hold back is counted there and told at their exit."""
    import multiprocessing

    from vmae_cli.cli.logs import messages_to

    log = logging.getLogger("vmae_cli.test")
    with open(tmp_path / "stderr.txt", "w") as stream:
        with messages_to(stream):
            log.warning("input 3: 2 frame(s) did not decode")
            worker = multiprocessing.get_context("fork").Process(target=_warn_three_times)
            worker.start()
            worker.join()
            log.warning("input 3: 5 frame(s) did not decode")
    assert (tmp_path / "stderr.txt").read_text().splitlines() == [
        "WARNING: input 3: 2 frame(s) did not decode",
        "WARNING: clip7.mp4: skipped a corrupt packet at pts 512",
        "WARNING: clip7.mp4: skipped a corrupt packet at pts 512 (and 2 more like it)",
        "WARNING: input 3: 2 frame(s) did not decode (and 1 more like it)",
    ]
