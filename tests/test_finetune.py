"""`vmae finetune` and `vmae evaluate` end to end on the tiny model and motion clips written here.

The classes differ only by motion (a square moving left, right, or standing still), so no single frame
tells them apart: a model that gets them right has learned something from time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae_cli.inference.evaluate import Accuracy
from vmae_cli.training.finetune import (
    ClassificationLoss,
    build_classifier,
    layer_decay_scale,
    resolve_recipe,
    run_finetuning,
)  # fmt: skip
from vmae_cli.training.recipe import FinetuneAugment
from vmae_cli.video.labelled import finetune_splits, load_labelled

from .conftest import load_script, read_metrics, vmae_in_process
from .models import tiny_classifier, tiny_pretraining

LABELS = {"left": (-3, (32, 30, 28, 31)), "right": (3, (0, 2, 4, 1)), "still": (0, (4, 14, 24, 30))}
# 12 videos in one batch: one optimizer step per epoch; no flip (it would swap left and right)
FAST = {
    "optim.batch_size": 12,
    "optim.lr": 1e-2,
    "run.workers": 0,
    "run.device": "cpu",
    "run.save_every": 1000,
}
SETS = ["data.flip=false", "data.scales=[1.0]", "optim.warmup_steps=2"]


def write_motion(path: Path, dx: int, start: int, frames: int = 10, size=(40, 32)) -> Path:
    """A bright 8x8 square moving dx pixels per frame (stopping at the border) on a dark background."""
    import av

    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in range(frames):
            img = np.full((h, w, 3), 20, np.uint8)
            x = min(max(start + dx * f, 0), w - 8)
            img[12:20, x : x + 8] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/train/<label>/ (4 clips each) and DATA/val/<label>/ (1 clip each, other start positions)."""
    root = tmp_path_factory.mktemp("motion")
    for label, (dx, starts) in LABELS.items():
        for k, start in enumerate(starts):
            write_motion(root / "train" / label / f"{k}.mp4", dx, start)
        write_motion(root / "val" / label / "0.mp4", dx, {-3: 29, 3: 3, 0: 18}[dx])
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ft") / "run"
    recipe = resolve_recipe(run, "tiny", SETS, {**FAST, "optim.max_steps": 60}, False)
    state = run_finetuning(recipe, str(data), run)
    assert state.step == 60
    return run


_metrics, vmae = read_metrics, vmae_in_process


# ---- fine-tuning ------------------------------------------------------------------------------------------------
def test_reaches_full_train_accuracy_and_writes_the_best_model(trained):
    epochs = [m for m in _metrics(trained) if "train_top1" in m]
    assert len(epochs) == 60 and all("val_top1" in m and "val_top5" in m for m in epochs)
    assert epochs[0]["train_top1"] < 0.7  # it starts near chance (1/3)
    assert max(m["train_top1"] for m in epochs[-12:]) == 1.0, [m["train_top1"] for m in epochs]
    best = [m for m in epochs if m.get("best")]
    assert best[-1]["val_top1"] == max(m["val_top1"] for m in epochs) and best[-1]["val_top1"] == 1.0
    config = json.loads((trained / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "left", "1": "right", "2": "still"}
    assert config["architectures"] == ["VideoMAEForVideoClassification"] and config["use_mean_pooling"]
    pre = json.loads((trained / "model" / "preprocessor_config.json").read_text())
    assert pre["frame_sampling"] == {"mode": "window", "frames": 4, "stride": 2, "clips": 1, "crops": 1,
                                     "pad": "repeat_last"}  # fmt: skip
    assert "layer_decay = 0.75" in (trained / "config.toml").read_text()


def test_checkpoints_carry_the_models_preprocessor_config(trained):
    """RUN/checkpoints/step-N/ samples as RUN/model does (the trained stride 2), not at the default stride 4."""
    expected = (trained / "model" / "preprocessor_config.json").read_text()
    checkpoints = list((trained / "checkpoints").iterdir())
    assert checkpoints and all((p / "preprocessor_config.json").read_text() == expected for p in checkpoints)


def test_classify_samples_as_training_did(capsys, trained, data):
    clip = data / "val" / "right" / "0.mp4"
    code, out, _ = vmae(capsys, "classify", clip, "--model", trained / "model", "--json", "--device", "cpu",
                        "--dtype", "fp32")  # fmt: skip
    record = json.loads(out)[0] if out.lstrip().startswith("[") else json.loads(out)
    assert code == 0 and record["views"] == 1
    assert record["frames"] == [[0, 2, 4, 6]]  # the central window of frames 0, 2, .., 8: 4 frames, stride 2
    assert record["predictions"][0]["label"] == "right"


# ---- evaluation ---------------------------------------------------------------------------------------------
def _direct(model_dir: Path, root: Path, clips: int, crops: int) -> tuple[np.ndarray, int]:
    """The confusion matrix and top-5 hits computed with the library, view by view."""
    from dataclasses import replace

    from vmae_cli import VideoMAEForVideoClassification
    from vmae_cli.inference.defaults import default_sampling
    from vmae_cli.inference.engine import preprocessor_for
    from vmae_cli.video.clips import load_clips

    model = VideoMAEForVideoClassification.from_pretrained(model_dir)
    spec = replace(default_sampling(model.config, model.preprocessor_config), clips=clips, crops=crops)
    pre = preprocessor_for(model, model.preprocessor_config)
    confusion, top5 = np.zeros((3, 3), dtype=np.int64), 0
    for true, label in enumerate(("left", "right", "still")):
        for path in sorted((root / label).glob("*.mp4")):
            x = load_clips(path, spec, pre).pixel_values
            with torch.no_grad():
                score = torch.softmax(model(x).logits, -1).mean(0)
            confusion[true, int(score.argmax())] += 1
            top5 += 1  # three labels: always in the top 5
    return confusion, top5


def test_evaluate_json_matches_a_direct_computation(capsys, trained, data):
    code, out, err = vmae(capsys, "evaluate", data / "train", "--model", trained / "model", "--json",
                          "--clips", "2", "--crops", "3", "--device", "cpu", "--dtype", "fp32", "--workers", "1")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    confusion, _ = _direct(trained / "model", data / "train", clips=2, crops=3)
    assert result["confusion_matrix"] == confusion.tolist()
    assert result["count"] == 12 and result["views"] == 6 and result["top5"] == 1.0
    assert result["top1"] == pytest.approx(np.trace(confusion) / 12, abs=1e-6)
    assert result["labels"] == ["left", "right", "still"]
    per = {c["label"]: c["accuracy"] for c in result["per_class"]}
    assert per == {k: pytest.approx(confusion[i, i] / 4, abs=1e-6) for i, k in enumerate(result["labels"])}
    assert result["failed"] == []


def test_evaluate_reads_every_list_format_alike(capsys, trained, data, tmp_path):
    """Class folders, a CSV with names, and the original `path index` list with a label map: one answer."""
    paths = [(p, label) for label in LABELS for p in sorted((data / "val" / label).glob("*.mp4"))]
    (tmp_path / "val.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in paths))
    names = list(LABELS)
    (tmp_path / "val.txt").write_text("".join(f"{p} {names.index(label)}\n" for p, label in paths))
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    common = ["--model", trained / "model", "--json", "--device", "cpu", "--workers", "1"]
    answers = [json.loads(vmae(capsys, "evaluate", src, *common, *extra)[1])
               for src, extra in ((data / "val", []), (tmp_path / "val.csv", []),
                                  (tmp_path / "val.txt", ["--labels", tmp_path / "labels.txt"]),
                                  (tmp_path / "val.txt", []))]  # fmt: skip
    assert answers[0] == answers[1] == answers[2] == answers[3]  # without --labels: the model's label order
    assert answers[0]["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # the best model: 100% on val


def test_evaluate_table_and_a_known_wrong_label(capsys, trained, data, tmp_path):
    """Every clip labelled `still`: top-1 is the share of clips the model calls still (1 in 3)."""
    rows = "".join(f"{p},still\n" for label in LABELS for p in sorted((data / "val" / label).glob("*.mp4")))
    (tmp_path / "all_still.csv").write_text("video,label\n" + rows)
    code, out, _ = vmae(capsys, "evaluate", tmp_path / "all_still.csv", "--model", trained / "model",
                        "--device", "cpu", "--workers", "1")  # fmt: skip
    assert code == 0 and "top-1 0.3333" in out and "confusion matrix" in out
    assert "│ still │    1 │     1 │     1 │" in out.replace("[bold]", "")


def test_accuracy_counts():
    acc = Accuracy.empty({0: "a", 1: "b", 2: "c"})
    acc.add([0.1, 0.7, 0.2], 1)
    acc.add([0.6, 0.3, 0.1], 1)
    acc.add([0.2, 0.3, 0.5], 2)
    assert acc.top1 == pytest.approx(2 / 3) and acc.top5 == 1.0
    assert acc.confusion.tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert [c["accuracy"] for c in acc.per_class()] == [None, 0.5, 1.0]


# ---- resume -----------------------------------------------------------------------------------------------------
def test_resume_continues_exactly(data, tmp_path):
    from safetensors.torch import load_file

    flags = {**FAST, "optim.max_steps": 6, "run.save_every": 3}
    whole = tmp_path / "whole"
    run_finetuning(resolve_recipe(whole, "tiny", SETS, flags, False), str(data / "train"), whole)
    cut = tmp_path / "cut"
    run_finetuning(resolve_recipe(cut, "tiny", SETS, flags, False), str(data / "train"), cut)
    import shutil

    shutil.rmtree(cut / "checkpoints" / "step-6")  # as if killed after the checkpoint at step 3
    shutil.rmtree(cut / "model")
    state = run_finetuning(resolve_recipe(cut, None, [], {}, True), str(data / "train"), cut, resume=True,
                           progress=False)  # fmt: skip
    assert state.step == 6
    a, b = load_file(whole / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in _metrics(cut)] == [m["step"] for m in _metrics(whole)]


def test_val_every_validates_every_nth_epoch_and_the_last(data, tmp_path):
    run = tmp_path / "run"
    flags = {**FAST, "optim.max_steps": 5}  # one step per epoch (12 clips, batch 12)
    run_finetuning(resolve_recipe(run, "tiny", [*SETS, "val_every=2"], flags, False), str(data), run,
                   progress=False)  # fmt: skip
    validated = [m["step"] for m in _metrics(run) if "val_top1" in m]
    assert validated == [2, 4, 5]
    assert (run / "model" / "model.safetensors").is_file()


# ---- models to start from --------------------------------------------------------------------------------------
def test_init_from_pretraining_classifier_and_preset(tmp_path, caplog):
    labels = {0: "left", 1: "right"}
    pre = build_classifier(str(tiny_pretraining(tmp_path / "pre")), labels)
    assert pre.config.id2label == labels and pre.config.use_mean_pooling
    cls_dir = tiny_classifier(tmp_path / "cls", labels=("walking", "running"))
    swapped = build_classifier(str(cls_dir), labels)  # same size, other labels: a new head
    assert swapped.classifier.weight.abs().max() < 1e-3
    kept = build_classifier(str(cls_dir), {0: "walking", 1: "running"})  # same labels: the head is kept
    assert kept.classifier.weight.abs().max() > 1e-3
    bigger = build_classifier(str(cls_dir), {0: "a", 1: "b", 2: "c"})
    assert bigger.classifier.out_features == 3
    scratch = build_classifier("tiny", labels, drop_path=0.1)
    assert scratch.config.num_labels == 2


def test_layer_decay_scales_follow_the_original():
    scale = layer_decay_scale(2, 0.5)  # L = 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, head 1
    assert scale("videomae.embeddings.patch_embeddings.projection.weight") == 0.125
    assert scale("videomae.encoder.layer.0.attention.attention.q_bias") == 0.25
    assert scale("videomae.encoder.layer.1.output.dense.weight") == 0.5
    assert scale("fc_norm.weight") == scale("classifier.bias") == 1.0


def test_mixup_and_cutmix_keep_soft_targets_summing_to_one():
    torch.manual_seed(0)
    model = build_classifier("tiny", {0: "a", 1: "b", 2: "c"})
    batch = {"pixel_values": torch.randint(0, 255, (4, 4, 3, 32, 32), dtype=torch.uint8),
             "labels": torch.tensor([0, 1, 2, 0])}  # fmt: skip
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        loss_fn = ClassificationLoss(3, FinetuneAugment(label_smoothing=0.1, mixup=mixup, cutmix=cutmix))
        x, target, mixed = loss_fn._mix(torch.rand(4, 4, 3, 32, 32), torch.eye(3)[batch["labels"]])
        assert mixed and torch.allclose(target.sum(-1), torch.ones(4))
        loss, n = loss_fn(model, batch)
        assert n == 4 and torch.isfinite(loss) and loss_fn.take_accuracy() == (0, 0)  # mixed: not counted


# ---- bad inputs ------------------------------------------------------------------------------------------------
def test_labelled_sets_and_their_errors(data, tmp_path):
    train, val = finetune_splits(data)
    assert len(train) == 12 and len(val) == 3 and train.id2label == {0: "left", 1: "right", 2: "still"}
    (tmp_path / "bad.csv").write_text("path,label\nx.mp4,jumping\n")
    with pytest.raises(Exception, match="not among the model's 3 labels: jumping"):
        load_labelled(tmp_path / "bad.csv", train.id2label)


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "{tmp}/nothing", "--model", "tiny", "--out", "{tmp}/r"], "no such file or folder"),
        (["finetune", "{data}/train/left", "--model", "tiny", "--out", "{tmp}/r"], "no class folders"),
        (["finetune", "{data}", "--model", "tiny", "--out", "{tmp}/r", "--set", "optim.nope=1"], "unknown key"),
        (["finetune", "{data}", "--model", "tiny", "--out", "{tmp}/r", "--val", "{tmp}/one.csv"],
         "not among the model's 3 labels"),
        (["finetune", "{data}", "--model", "tiny", "--out", "{tmp}/r", "--labels", "{tmp}/missing.txt",
          "--val", "{tmp}/one.csv"], "cannot read the label map"),
        (["evaluate", "{data}/val", "--model", "{tmp}/cls"], "not among the model's 3 labels"),
        (["evaluate", "{tmp}/one.csv", "--model", "{tmp}/cls", "--clips", "0"], "--clips"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_exit_2(capsys, data, tmp_path, args, message):
    (tmp_path / "one.csv").write_text(f"path,label\n{data}/val/left/0.mp4,jumping\n")
    tiny_classifier(tmp_path / "cls")
    code, out, err = vmae(capsys, *[a.format(tmp=tmp_path, data=data) for a in args])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert out == ""


def test_evaluate_a_model_without_head_says_what_to_do(capsys, data, tmp_path):
    code, _, err = vmae(capsys, "evaluate", data / "val", "--model", tiny_pretraining(tmp_path / "pre"))
    assert code == 2 and "no classifier head" in err and len(err.strip().splitlines()) == 1


def test_an_existing_run_needs_resume(capsys, trained, data):
    code, _, err = vmae(capsys, "finetune", data, "--model", "tiny", "--out", trained)
    assert code == 2 and "--resume" in err


def test_integer_labels_sort_numerically(tmp_path):
    (tmp_path / "list.txt").write_text("".join(f"v{i}.mp4 {i}\n" for i in (10, 2, 1)))
    assert load_labelled(tmp_path / "list.txt").id2label == {0: "1", 1: "2", 2: "10"}


def test_synthetic_generator_writes_the_layout(tmp_path):
    from vmae_cli.video.reader import VideoReader

    module = load_script("make_synthetic")
    module.make_dataset(tmp_path, unlabelled=1, train=1, val=1, samples=1)
    assert len(list((tmp_path / "unlabelled").glob("*.mp4"))) == len(module.MOTIONS)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(module.MOTIONS)
    with VideoReader(tmp_path / "samples" / "clockwise.mp4") as reader:
        assert reader.count_frames() == module.FRAMES and (reader.width, reader.height) == (40, 40)
    train, val = finetune_splits(tmp_path)
    assert len(train.id2label) == 8 and len(val) == 8


def test_motion4_generator_writes_the_layout_with_only_motion_telling_classes_apart(tmp_path):
    from vmae_cli.video.reader import VideoReader

    module = load_script("make_motion4")
    module.make_dataset(tmp_path, unlabelled=1, train=5, val=1)
    assert len(list((tmp_path / "unlabelled").glob("*.mp4"))) == 4
    with VideoReader(tmp_path / "val" / "up" / "000.mp4") as reader:
        assert reader.count_frames() == 32 and (reader.width, reader.height) == (64, 64)
    train4, _ = finetune_splits(tmp_path / "train4", str(tmp_path / "val"))
    assert len(train4) == 16 and sorted(train4.id2label.values()) == ["down", "left", "right", "up"]
    # the object moves the class's way: the bright texture's centre of mass shifts along the direction only
    rng = np.random.default_rng(0)
    for label, (ux, uy) in module.DIRECTIONS.items():
        clip = module.render_clip(label, rng).astype(float).sum(-1)
        first, last = (np.argwhere(f > np.percentile(f, 90)).mean(0) for f in (clip[0], clip[-1]))
        (dy, dx) = last - first
        assert dx * ux + dy * uy > 10 and abs(dx * uy) + abs(dy * ux) < 4, (label, dx, dy)


# ---- flips, and the recipe that fits the model -----------------------------------------------------------------
def test_flip_warning_on_direction_classes_and_no_flip_turns_flips_off(data, tmp_path):
    from .conftest import run_vmae

    common = ["--model", "tiny", "--max-steps", "1", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]
    flipped = run_vmae("finetune", str(data), "--out", str(tmp_path / "a"), *common, "--quiet")
    assert flipped.returncode == 0, flipped.stderr
    warnings = [line for line in flipped.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "'left', 'right'" in warnings[0], flipped.stderr
    assert "--no-flip" in warnings[0]
    assert "'still'" not in warnings[0] and "flip = true" in (tmp_path / "a" / "config.toml").read_text()
    plain = run_vmae("finetune", str(data), "--out", str(tmp_path / "b"), *common, "--quiet", "--no-flip")
    assert plain.returncode == 0 and "WARNING" not in plain.stderr, plain.stderr
    assert "flip = false" in (tmp_path / "b" / "config.toml").read_text()


def test_the_flip_warning_names_the_recipe_key_to_a_python_caller(caplog):
    from vmae_cli.training.finetune import warn_if_flips_swap_labels

    with caplog.at_level("WARNING", logger="vmae_cli"):
        warn_if_flips_swap_labels(True, ["left", "right", "still"])
    assert "'left', 'right'" in caplog.text and "add `data.flip=False`" in caplog.text
    assert "--" not in caplog.text and "\x1f" not in caplog.text


def test_mirrored_labels_on_the_real_label_sets():
    from vmae_cli.convert.build import load_labels
    from vmae_cli.training.finetune import mirrored_labels

    # K400's "push up" or "baby waking up" keep their label in a mirror
    assert mirrored_labels(load_labels("k400", 400).values()) == []
    assert sorted(mirrored_labels(load_labels("ssv2", 174).values())) == [
        "Plugging something into something but pulling it right out as you remove your hand",
        "Pulling something from left to right", "Pulling something from right to left",
        "Pushing something from left to right", "Pushing something from right to left",
        "Turning the camera left while filming something", "Turning the camera right while filming something",
    ]  # fmt: skip
    names = ["MovingLeft", "turn_counter-clockwise", "anticlockwise", "to the right", "up", "down", "zoom_in",
             "copyright", "leftover", "Rightwards"]  # fmt: skip
    assert mirrored_labels(names) == ["MovingLeft", "turn_counter-clockwise", "anticlockwise", "to the right",
                                      "Rightwards"]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "pretrain", "finetune"),
    [("tiny", "tiny", "tiny"), ("mini", "small-data", "small-data"), ("small", "small", "base"),
     ("base", "base", "base"), ("large", "base", "base"), ("huge", "base", "base")],
)  # fmt: skip
def test_the_recipe_fits_the_model_size_not_its_name(tmp_path, model, pretrain, finetune):
    from vmae_cli.models.config import VideoMAEConfig
    from vmae_cli.training.recipe import recipe_for_model

    assert (recipe_for_model(model, "pretrain"), recipe_for_model(model, "finetune")) == (pretrain, finetune)
    folder = tmp_path / "renamed"  # a run's model folder: the same architecture, no preset name to go by
    VideoMAEConfig.from_preset(model).save_pretrained(folder)
    assert (recipe_for_model(str(folder), "pretrain"), recipe_for_model(str(folder), "finetune")) == (
        pretrain, finetune)  # fmt: skip
    # unreadable here: the paper's recipe, and the run's own loading says what is wrong
    assert recipe_for_model(str(tmp_path / "missing"), "finetune") == "base"


def test_finetune_of_a_small_pretrained_folder_takes_the_small_data_recipe(tmp_path):
    """The issue's case: `vmae finetune --model RUN/model` of a mini-sized encoder used to take the ViT-B recipe
    (320-pixel decode, mixup 0.8, cutmix 1.0, lr 5e-4 x 16 / 256 = 3.1e-5, a loss that stays at ln 4)."""
    from vmae_cli.models.config import VideoMAEConfig
    from vmae_cli.models.modeling import VideoMAEForPreTraining
    from vmae_cli.training.parts import plan_steps

    folder = tmp_path / "run" / "model"
    VideoMAEForPreTraining(VideoMAEConfig.from_preset("mini")).save_pretrained(folder)
    recipe = resolve_recipe(tmp_path / "ft", None, [], {"model": str(folder)}, False)
    assert recipe.model == str(folder) and recipe.augment.mixup == 0 and recipe.augment.cutmix == 0
    assert recipe.optim.layer_decay < 1 and recipe.data.short_side == 40
    plan = plan_steps(recipe.optim, 16, 2, clips_per_video=1, world=1)  # 4 labels x 4 classes, batch 8
    assert plan.peak == pytest.approx(8e-3 * (8 / 256) ** 0.5) and plan.total == 300
    base = resolve_recipe(tmp_path / "ft2", "base", [], {"model": str(folder)}, False)
    assert base.augment.mixup == 0.8  # a named recipe still wins


def test_label_map_and_shard_errors_name_parameters_not_flags(tmp_path):
    """A Python caller is told about `label_map` / `shard` (the CLI says --labels / --shard), with fields."""
    from vmae_cli.errors import UsageError
    from vmae_cli.video.discover import parse_shard
    from vmae_cli.video.labelled import read_label_map

    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(UsageError) as info:
        read_label_map(tmp_path / "dup.txt")
    assert str(info.value).startswith("`label_map` ") and "--" not in str(info.value)
    assert (info.value.param, info.value.path) == ("label_map", tmp_path / "dup.txt")
    with pytest.raises(UsageError) as info:
        parse_shard("3/2")
    assert str(info.value) == "`shard` 3/2: need 0 <= i < n" and info.value.value == "3/2"
