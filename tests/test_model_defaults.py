"""What vmae decides for a model when the user does not say: its frame sampling, from evidence that cannot
collide (an explicit --sampling, the model's frame_sampling section, its exact label set), and how `vmae info`
reports it. The models carry the real label sets users meet: the bundled Kinetics-400 and SSv2 lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vmae_cli.models.labelsets import bundled, recognise
from vmae_cli.video.sampling import segment_indices, window_indices

from .conftest import run_vmae, vmae_in_process
from .models import TINY_PREPROCESSOR, tiny_classifier, tiny_pretraining
from .videos import write_video

NUM_FRAMES = 60  # the test video: 2.4 s at 25 fps


def _hub_spelling(label: str) -> str:
    """SSv2 as the Hub's configs spell it: "Putting [something] into [something]"."""
    return label.replace("something", "[something]").replace("Something", "[Something]")


K400 = tuple(bundled("k400")[i] for i in range(400))
SSV2_HUB = tuple(_hub_spelling(bundled("ssv2")[i]) for i in range(174))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", NUM_FRAMES, gop=10)


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("k400"), labels=K400)


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("ssv2"), labels=SSV2_HUB)


def _classify(capsys, video, model, *args):
    code, out, err = vmae_in_process(capsys, "classify", video, "--model", model, "--json", *args)
    assert code == 0, err
    return json.loads(out)[0]


def _info(capsys, model):
    code, out, err = vmae_in_process(capsys, "info", model, "--json")
    assert code == 0, err
    return json.loads(out)


# ---- label sets ----------------------------------------------------------------------------------------------
def test_kinetics_400_is_not_taken_for_something_something():
    assert "swinging on something" in K400  # the word that used to decide
    assert recognise(dict(enumerate(K400))) == "Kinetics-400"
    assert recognise(dict(enumerate(SSV2_HUB))) == "Something-Something v2"
    assert recognise(bundled("ssv2")) == "Something-Something v2"  # "something" and "[something]" alike


UCF101_SOME = ["ApplyEyeMakeup", "ApplyLipstick", "BlowDryHair", "JumpingJack", "PlayingDhol", "YoYo"]
HMDB51_SOME = ["brush_hair", "cartwheel", "draw_sword", "flic_flac", "shoot_bow", "swing_baseball"]


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([f"LABEL_{i}" for i in range(174)], None),  # 174 outputs are not evidence on their own
        (list(SSV2_HUB[:173]) + ["Juggling something"], None),  # one class differs: not SSv2
        (["walking", "swinging on something", "putting something on something"], None),
        (list(K400) + [f"new class {i}" for i in range(200)], "Kinetics-600"),
        (list(K400) + [f"new class {i}" for i in range(300)], "Kinetics-700"),
        ([f"class {i}" for i in range(600)], None),  # 600 labels without Kinetics names
        (UCF101_SOME + [f"Class{i}" for i in range(95)], "UCF101"),
        (HMDB51_SOME + [f"class_{i}" for i in range(45)], "HMDB51"),
    ],
)
def test_label_sets_need_their_size_and_their_names(labels, expected):
    assert recognise(dict(enumerate(labels))) == expected


# ---- classify, end to end ----------------------------------------------------------------------------------
def test_a_kinetics_classifier_takes_the_central_window_and_the_5x3_protocol(capsys, video, k400):
    record = _classify(capsys, video, k400)
    assert record["views"] == 1 and record["frames"] == window_indices(NUM_FRAMES, 4, 4).tolist()
    assert record["frames"] == [[20, 24, 28, 32]]
    result = run_vmae("classify", str(video), "--model", str(k400), "--json", "--clips", "5", "--crops", "3")
    assert result.returncode == 0, result.stderr  # the README's K400 protocol, as a user runs it
    record = json.loads(result.stdout)[0]
    assert record["views"] == 15 and record["frames"] == window_indices(NUM_FRAMES, 4, 4, 5).tolist()
    assert record["predictions"][0]["label"] in K400


def test_an_ssv2_classifier_takes_segments_and_sampling_overrides_either(capsys, video, k400, ssv2):
    mids = segment_indices(NUM_FRAMES, 4).tolist()
    assert _classify(capsys, video, ssv2)["frames"] == [mids]
    assert _classify(capsys, video, ssv2, "--sampling", "window")["frames"] == [[20, 24, 28, 32]]
    assert _classify(capsys, video, k400, "--sampling", "uniform")["frames"] == [mids]


def test_frame_sampling_wins_over_the_labels(capsys, video, tmp_path):
    sampling = {"mode": "window", "frames": 4, "stride": 2}
    model = tiny_classifier(tmp_path, labels=SSV2_HUB)
    (model / "preprocessor_config.json").write_text(
        json.dumps({**TINY_PREPROCESSOR, "frame_sampling": sampling})
    )
    assert _classify(capsys, video, model)["frames"] == window_indices(NUM_FRAMES, 4, 2).tolist()
    info = _info(capsys, model)
    assert info["sampling"]["stride"] == 2
    assert info["sampling_from"] == "frame_sampling in preprocessor_config.json"


def test_info_shows_the_sampling_classify_uses(capsys, k400, ssv2):
    k400_info = _info(capsys, k400)
    assert k400_info["sampling"] == {"mode": "window", "frames": 4, "stride": 4, "clips": 1, "crops": 1,
                                     "pad": "repeat_last"}  # fmt: skip
    assert k400_info["sampling_from"] == "labels: Kinetics-400"
    ssv2_info = _info(capsys, ssv2)
    assert ssv2_info["sampling"]["mode"] == "uniform"
    assert ssv2_info["sampling_from"] == "labels: Something-Something v2"


# ---- pooling ---------------------------------------------------------------------------------------------------
def _embed(capsys, video, model, out, *args):
    code, _, err = vmae_in_process(
        capsys, "embed", video, "--model", model, "--out", out, "--dtype", "fp32", *args
    )
    assert code == 0, err
    return np.load(out)


@pytest.mark.parametrize(
    "kind, pooling",
    [
        ("pretraining", {"classify": None, "embed": "mean"}),
        ("token0 classifier", {"classify": "token0", "embed": "mean"}),
        ("mean classifier", {"classify": "mean+fc_norm", "embed": "mean+fc_norm"}),
    ],
)
def test_info_reports_the_pooling_embed_and_classify_use(capsys, tmp_path, video, kind, pooling):
    if kind == "pretraining":
        model = tiny_pretraining(tmp_path / "m")
    else:
        model = tiny_classifier(tmp_path / "m", use_mean_pooling=kind == "mean classifier")
    assert _info(capsys, model)["pooling"] == pooling
    auto = _embed(capsys, video, model, tmp_path / "auto.npy")
    mean = _embed(capsys, video, model, tmp_path / "mean.npy", "--pool", "mean")
    token0 = _embed(capsys, video, model, tmp_path / "token0.npy", "--pool", "token0")
    assert not np.allclose(auto, token0)  # never the first tubelet
    assert np.array_equal(auto, mean) == (pooling["embed"] == "mean")  # fc_norm changes the mean


# ---- a model that cannot be used: the run cannot start (exit 2) ---------------------------------------------
@pytest.fixture(scope="module")
def unusable(tmp_path_factory, video, k400):
    """A labelled folder, and models that exist but cannot serve: damaged weights, a pre-training model."""
    import shutil

    root = tmp_path_factory.mktemp("unusable")
    for label in ("a", "b"):
        (root / "data" / label).mkdir(parents=True)
        shutil.copy(video, root / "data" / label / "1.mp4")
    shutil.copytree(k400, root / "damaged")
    weights = root / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as an interrupted download leaves it
    tiny_pretraining(root / "pre")
    return root


@pytest.mark.parametrize(
    "args, says",
    [
        (["classify", "{video}", "--model", "{root}/no-such-model"], "no such file or folder"),
        (["classify", "{video}", "--model", "acme/not-cached"], "hf download acme/not-cached"),
        (["classify", "{video}", "--model", "{root}/damaged"], "damaged or truncated"),
        (["classify", "{video}", "--model", "{root}/pre"], "no classifier head"),
        (["embed", "{video}", "--model", "{root}/damaged", "--out", "{out}/f.npy"], "damaged or truncated"),
        (["evaluate", "{root}/data", "--model", "{root}/pre"], "no classifier head"),
        (["probe", "{root}/data", "--model", "{root}/no-such-model"], "no such file or folder"),
        (
            ["finetune", "{root}/data", "--model", "{root}/damaged", "--out", "{out}/run"],
            "damaged or truncated",
        ),
        (
            [
                "pretrain",
                "{root}/data",
                "--init",
                "{root}/damaged",
                "--out",
                "{out}/run",
                "--model-config",
                "tiny",
                "--batch-size",
                "1",
            ],
            "damaged or truncated",
        ),  # fmt: skip (a classifier or an encoder is a valid --init: a new decoder, as transformers allows)
        (["info", "acme/not-cached"], "hf download acme/not-cached"),
        (["info", "{root}/damaged"], "damaged or truncated"),
        (["convert", "{root}/damaged/model.safetensors", "{out}/converted"], "damaged"),
    ],
    ids=[
        "missing",
        "not-cached",
        "damaged",
        "pre-training",
        "embed-damaged",
        "evaluate-pre-training",
        "probe-missing",
        "finetune-damaged",
        "pretrain-init-damaged",
        "info-not-cached",
        "info-damaged",
        "convert-damaged",
    ],
)
def test_a_model_that_cannot_be_used_exits_2_in_one_line(capsys, tmp_path, video, k400, unusable, args, says):
    """Exit 2, as for usage: a script tells a typo in --model from a video that failed (1). Nothing is written."""
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = vmae_in_process(
        capsys, *[a.format(video=video, root=unusable, k400=k400, out=out) for a in args]
    )
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err
    assert stdout == "" and list(out.iterdir()) == []


# ---- precision: what --dtype auto means per command -----------------------------------------------------------
def test_auto_dtype_per_command(cpu_bf16):
    """classify and training: bf16 where the CPU has it natively; embed: fp32 on any CPU unless asked."""
    import torch

    from vmae_cli.runtime import resolve_dtype
    from vmae_cli.training.parts import Precision

    cpu, native = torch.device("cpu"), torch.bfloat16 if cpu_bf16 else torch.float32
    assert resolve_dtype("auto", cpu, cpu_bf16=True) == native  # classify, evaluate
    assert resolve_dtype("auto", cpu, cpu_bf16=False) == torch.float32  # embed, probe
    assert resolve_dtype("bf16", cpu, cpu_bf16=False) == torch.bfloat16  # asked for: always
    assert Precision.create("auto", cpu).name == ("bf16" if cpu_bf16 else "fp32")  # pretrain, finetune


def test_the_bf16_switch_is_checked(monkeypatch):
    import torch

    from vmae_cli.errors import UsageError
    from vmae_cli.runtime import resolve_dtype

    monkeypatch.setenv("VMAE_CPU_BF16", "yes")
    with pytest.raises(UsageError, match="VMAE_CPU_BF16='yes': expected 1"):
        resolve_dtype("auto", torch.device("cpu"), cpu_bf16=True)


def test_embed_auto_gives_the_fp32_vectors_on_any_cpu(tmp_path, video, k400, cpu_bf16):
    """Vectors are stored and compared: on a CPU, auto never rounds them to bf16 (a subprocess, as users run it,
    inheriting VMAE_CPU_BF16); --dtype bf16 does, when asked for."""
    vectors = {}
    for dtype in ("auto", "fp32", "bf16"):
        out = tmp_path / f"{dtype}.npy"
        result = run_vmae("embed", str(video), "--model", str(k400), "--out", str(out), "--dtype", dtype)
        assert result.returncode == 0, result.stderr
        vectors[dtype] = np.load(out)
    np.testing.assert_array_equal(vectors["auto"], vectors["fp32"])
    assert 1e-4 < np.abs(vectors["bf16"] - vectors["fp32"]).max() < 0.1


def _k400_prototypes(capsys, tmp_path, k400, paths: list, labels: list[int], scale: float = 8.0):
    """A copy of the K400 classifier whose head gives each video its own label by a margin of `scale` logits:
    row labels[i] is the video's centred fp32 feature (what the head sees), scaled, so no training is needed
    and no luck is involved; the other 396 rows keep their random weights."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    feats = []
    for k, path in enumerate(paths):
        out = tmp_path / f"f{k}.npy"
        code, _, err = vmae_in_process(
            capsys, "embed", path, "--model", k400, "--out", out, "--dtype", "fp32"
        )
        assert code == 0, err
        feats.append(torch.from_numpy(np.load(out)[0]))
    f = torch.stack(feats).double()  # (V, D)
    centred = f - f.mean(0)
    model = tmp_path / "k400-prototypes"
    shutil.copytree(k400, model)
    state = load_file(model / "model.safetensors")
    w, b = state["classifier.weight"].double(), state["classifier.bias"].double()
    for c, label in zip(centred, labels, strict=True):
        w[label] = scale * c / c.dot(c)  # logit scale on its own video, less on the others (they sum to zero)
        b[label] = -w[label].dot(f.mean(0))
    state["classifier.weight"], state["classifier.bias"] = w.float(), b.float()
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


def test_classify_auto_bf16_keeps_fp32_top1_on_kinetics_labels(capsys, tmp_path, video, k400, cpu_bf16):
    """On a CPU with native bf16, classify runs in bf16 (auto): its top-1 equals fp32's, on real camera clips and
    synthetic ones, with the real Kinetics-400 label set (400 outputs competing)."""
    from .conftest import DATA

    paths = [DATA / "bikes.mp4", DATA / "carphone_pristine.mp4", video]
    names = ["riding a bike", "driving car", "juggling balls"]
    model = _k400_prototypes(capsys, tmp_path, k400, paths, [K400.index(n) for n in names])
    runs = {}
    for dtype in ("auto", "fp32"):
        result = run_vmae("classify", *map(str, paths), "--model", str(model), "--jsonl", "--dtype", dtype)
        assert result.returncode == 0, result.stderr
        runs[dtype] = [json.loads(line)["predictions"] for line in result.stdout.splitlines()]
    assert [p[0]["label"] for p in runs["fp32"]] == names  # the head does what it was built to
    assert [p[0]["label"] for p in runs["auto"]] == names
    auto_scores = [p[0]["score"] for p in runs["auto"]]
    fp32_scores = [p[0]["score"] for p in runs["fp32"]]
    assert (auto_scores != fp32_scores) == cpu_bf16  # auto did run in bf16 where native, and only there
