"""`vmae pretrain` end to end on the tiny model and videos written here, plus its pure parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vmae_cli.cli.app import main
from vmae_cli.models.config import VideoMAEConfig
from vmae_cli.models.masking import decoder_mask, tube_mask
from vmae_cli.models.modeling import ShapeError, VideoMAEForPreTraining
from vmae_cli.models.targets import pretraining_targets
from vmae_cli.training.data import ClipSpec, EpochSampler, FrameCache, augmented_clips, multi_scale_crop_box
from vmae_cli.training.parts import cosine_lr, no_weight_decay, param_groups
from vmae_cli.training.pretrain import resolve_recipe, run_pretraining, write_png
from vmae_cli.training.recipe import (
    OptimRecipe,
    PretrainRecipe,
    RecipeError,
    load_recipe,
    recipe_path,
    to_toml,
)
from vmae_cli.video.discover import list_videos

from .conftest import REPO, read_metrics
from .videos import write_video

TINY = ["--model-config", "tiny", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Eight short moving-band videos of different lengths, and one file that is not a video."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(8):
        write_video(root / f"v{i}.mp4", 20 + 3 * i, size=(48, 40), gop=6)
    (root / "broken.mp4").write_text("not a video")
    return root


_metrics = read_metrics


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmae_cli", "pretrain", *args], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)  # fmt: skip


# ---- end to end -----------------------------------------------------------------------------------------------
def test_loss_goes_down_and_run_folder_is_complete(videos, tmp_path):
    run = tmp_path / "run"
    recipe = resolve_recipe(run, "tiny", ["run.preview_every=25", "data.num_sample=2"],
                            {"optim.max_steps": 50, "run.workers": 0, "run.device": "cpu", "optim.lr": 3e-3}, False)  # fmt: skip
    state = run_pretraining(recipe, str(videos), run)
    losses = [m["loss"] for m in _metrics(run)]
    assert len(losses) == 50 and state.step == 50
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05, losses
    assert list(state.skipped) == [str(videos / "broken.mp4")]  # counted, never replaced
    assert "broken.mp4" in (run / "skipped.txt").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-50"]
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step-25.png", "step-50.png"]
    png = (run / "previews" / "step-25.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    pre = json.loads((run / "model" / "preprocessor_config.json").read_text())
    assert pre["frame_sampling"]["frames"] == 4 and pre["crop_size"] == {"height": 32, "width": 32}
    resolved = load_recipe(PretrainRecipe, run / "config.toml")
    assert resolved.optim.max_steps == 50 and resolved.data.num_sample == 2


def test_dual_masking_trains_and_decodes_only_the_chosen_tokens(videos, tmp_path):
    run = tmp_path / "run"
    recipe = resolve_recipe(run, "tiny", ["mask.decoder_ratio=0.5", "run.preview_every=0"],
                            {"optim.max_steps": 40, "run.workers": 0, "run.device": "cpu", "optim.lr": 3e-3}, False)  # fmt: skip
    run_pretraining(recipe, str(videos), run)
    losses = [m["loss"] for m in _metrics(run)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05, losses
    assert "decoder_ratio = 0.5" in (run / "config.toml").read_text()


def test_decoder_mask_picks_masked_tokens_and_the_model_decodes_just_those():
    config = VideoMAEConfig.from_preset("tiny")  # 32 tokens, 2 time steps
    g = torch.Generator().manual_seed(0)
    enc = tube_mask(config, 3, 0.75, generator=g)  # 24 masked per sample
    dec = decoder_mask(enc, 0.5, generator=g)  # the decoder skips 16 of 32 tokens: 8 masked ones remain
    assert dec.shape == enc.shape and not (dec & ~enc).any() and dec.sum(1).tolist() == [8, 8, 8]
    per_step = dec.view(3, 2, 16).sum(1)  # chosen per token, not per tube: both time steps differ
    assert (per_step == 1).any()
    with pytest.raises(ValueError, match="decoder_ratio"):
        decoder_mask(enc, 0.8)
    torch.manual_seed(0)
    model = VideoMAEForPreTraining(config).eval()
    x = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        full, same = model(x, enc), model(x, enc, decoder_mask=enc)
        part = model(x, enc, decoder_mask=dec)
    assert torch.equal(full.logits, same.logits) and torch.equal(full.loss, same.loss)
    assert part.logits.shape == (3, 8, config.patch_dim)
    target = pretraining_targets(x, dec, config)
    assert torch.allclose(part.loss, torch.nn.functional.mse_loss(part.logits, target))
    with pytest.raises(ShapeError, match="decoder_mask must pick"):
        model(x, enc, decoder_mask=dec | ~enc)


def test_output_loads_in_transformers_with_the_same_loss(videos, tmp_path):
    transformers = pytest.importorskip("transformers")
    from vmae_cli import VideoMAEForPreTraining
    from vmae_cli.models.masking import tube_mask

    run = tmp_path / "run"
    recipe = resolve_recipe(
        run, "tiny", [], {"optim.max_steps": 3, "run.workers": 0, "run.device": "cpu"}, False
    )
    run_pretraining(recipe, str(videos), run)
    ours = VideoMAEForPreTraining.from_pretrained(run / "model")
    theirs = transformers.VideoMAEForPreTraining.from_pretrained(run / "model").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 32, 32, generator=g)
    mask = tube_mask(ours.config, 2, 0.75, generator=g)
    with torch.no_grad():
        a, b = ours(x, mask).loss, theirs(pixel_values=x, bool_masked_pos=mask).loss
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_resume_after_kill_9_gives_the_same_loss_curve(videos, tmp_path):
    args = [
        str(videos),
        *TINY,
        "--max-steps",
        "24",
        "--save-every",
        "6",
        "--seed",
        "3",
        "--set",
        "run.log_every=1",
    ]
    full = _cli(*args, "--out", str(tmp_path / "full"))
    killed_run = tmp_path / "killed"
    # slowed down so that the kill lands mid-run, after a checkpoint and before the end
    victim = _cli(*args, "--out", str(killed_run), env={"VMAE_STEP_DELAY": "0.15"})
    deadline = time.monotonic() + 300  # waits (a loaded machine starts slowly), does not time
    while not (killed_run / "checkpoints" / "step-12").exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # a few steps past the checkpoint, maybe mid-write of the next one
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    logged = [m["step"] for m in _metrics(killed_run)]
    assert 12 <= max(logged) < 24
    resumed = _cli(*args, "--out", str(killed_run), "--resume")
    assert resumed.wait(timeout=90) == 0, resumed.communicate()
    assert full.wait(timeout=90) == 0, full.communicate()
    a, b = _metrics(tmp_path / "full"), _metrics(killed_run)
    assert [m["step"] for m in b] == list(range(1, 25))
    assert [(m["step"], m["loss"], m["lr"]) for m in a] == [(m["step"], m["loss"], m["lr"]) for m in b]
    from safetensors.torch import load_file

    wa, wb = (
        load_file(tmp_path / "full" / "model" / "model.safetensors"),
        load_file(killed_run / "model" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigint_saves_and_exits_cleanly(videos, tmp_path):
    run = tmp_path / "run"
    proc = _cli(str(videos), *TINY, "--max-steps", "500", "--out", str(run), env={"VMAE_STEP_DELAY": "0.05"})
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() or len(_metrics(run)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    step = max(m["step"] for m in _metrics(run))
    assert (run / "checkpoints" / f"step-{step}" / "trainer_state.pt").is_file()


def test_torchrun_two_processes_on_cpu(videos, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vmae_cli",
           "pretrain", str(videos), *TINY, "--batch-size", "2", "--max-steps", "4", "--out", str(run)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # rank 0 only writes
    config = (run / "config.toml").read_text()
    # the lr follows the global batch: 2 videos x 2 samples x 2 processes = 8 clips: blr 0.018 x sqrt(8 / 256)
    assert "global batch 8 clips" in config and "2 process(es)" in config and "peak lr 0.003182" in config
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, e: [str(e), "--out", str(d / "r")], "no video files in this folder"),
        (lambda d, e: [str(d / "missing"), "--out", str(d / "r")], "no such file or folder"),
        (lambda d, e: ["x", "--out", str(d / "r"), "--set", "optim.nope=1"], "--set optim.nope: unknown key"),
        (lambda d, e: ["x", "--out", str(d / "r"), "--set", "optim.epochs=many"], "optim.epochs must be int"),
        (lambda d, e: ["x", "--out", str(d / "r"), "--config", "nosuch"], "not a recipe name"),
        (
            lambda d, e: ["x", "--out", str(d / "r"), "--set", "mask.decoder_ratio=0.8"],
            "mask.decoder_ratio: ",
        ),
    ],
    ids=["empty-folder", "missing-data", "bad-set-key", "bad-set-type", "bad-config", "bad-decoder-ratio"],
)
def test_bad_inputs_give_one_line_errors(tmp_path, capsys, make_args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *make_args(tmp_path, empty), *TINY])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: "), err


def test_no_flip_turns_flips_off(videos, tmp_path):
    from .conftest import run_vmae

    done = run_vmae("pretrain", str(videos), *TINY, "--max-steps", "1", "--no-flip", "--quiet", "--out",
                    str(tmp_path / "r"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "flip = false" in (tmp_path / "r" / "config.toml").read_text()


def test_frame_cache_cuts_the_windows_decoding_cuts(videos, tmp_path, caplog):
    """Cached videos give bit-equal clips to decoding each sample anew (short and long videos, a resize to the
    decode size, a rotated file, variable gops); a video past the budget is decoded per sample, not cached."""
    write_video(tmp_path / "rotated.mp4", 30, size=(64, 48), rotation=90)
    write_video(tmp_path / "long.mp4", 400, size=(80, 64), gop=50)
    paths = [
        *sorted(str(p) for p in videos.glob("v*.mp4")),
        str(tmp_path / "rotated.mp4"),
        str(tmp_path / "long.mp4"),
    ]
    spec = ClipSpec(frames=4, stride=3, size=32, short_side=40, num_sample=2, cache_bytes=0)
    long_bytes = 400 * 50 * 40 * 3  # decoded at short side 40: 50x40; the others take less than half of it
    cache = FrameCache(budget=long_bytes - 1)  # everything but the long video
    caplog.set_level("WARNING", logger="vmae_cli.training.data")
    for epoch in range(3):
        for i, path in enumerate(paths):
            plain = augmented_clips(path, spec, np.random.default_rng([epoch, i]))
            cached = augmented_clips(path, spec, np.random.default_rng([epoch, i]), cache)
            assert plain.shape == (2, 4, 3, 32, 32) and torch.equal(plain, cached), path
    assert str(tmp_path / "long.mp4") not in cache.videos and len(cache.videos) == len(paths) - 1
    assert cache.used == sum(v.nbytes for v in cache.videos.values()) <= cache.budget
    full = [r.getMessage() for r in caplog.records if "frame cache is full" in r.getMessage()]
    assert len(full) == 1 and "long.mp4" in full[0] and "data.cache_mb" in full[0], full  # once
    broken = augmented_clips(str(videos / "broken.mp4"), spec, np.random.default_rng(0), cache)
    assert broken["failed"][0] == str(videos / "broken.mp4")  # an unreadable file fails as without a cache


def test_a_run_learns_the_same_with_the_frame_cache(videos, tmp_path):
    """The cache changes the speed, never the clips: the loss curves are equal, with workers decoding."""
    curves = []
    for mb in (0, 64):
        run = tmp_path / f"cache-{mb}"
        recipe = resolve_recipe(run, "tiny", [f"data.cache_mb={mb}"],
                                {"optim.max_steps": 6, "run.workers": 2, "run.device": "cpu", "run.log_every": 1}, False)  # fmt: skip
        run_pretraining(recipe, str(videos), run)
        curves.append([m["loss"] for m in _metrics(run)])
    assert len(curves[0]) == 6 and curves[0] == curves[1]


def test_an_existing_run_needs_resume(videos, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    with pytest.raises(Exception, match="already holds a run; add `resume`"):
        resolve_recipe(tmp_path / "r", None, [], {}, resume=False)


# ---- pure parts ---------------------------------------------------------------------------------------------------
def test_schedule_warms_up_then_follows_a_cosine():
    lrs = [cosine_lr(s, 1.0, 100, warmup_steps=10, min_lr=0.1, warmup_lr=0.0) for s in range(101)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_lr_rule_is_linear_from_256_clips_up_and_square_root_below():
    from vmae_cli.training.parts import scaled_lr

    # the paper's batches keep the paper's lr: ViT-B pre-training 2048 clips, fine-tuning 512
    assert scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3) and scaled_lr(5e-4, 512) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 256) == pytest.approx(5e-4)
    # one CPU's 16 clips: 1/4 of the base where the linear rule gave 1/16 (the base recipe's 3.1e-5)
    assert scaled_lr(5e-4, 16) == pytest.approx(1.25e-4) and scaled_lr(1.0, 4) == pytest.approx(0.125)
    lrs = [scaled_lr(1.0, b) for b in range(1, 4097)]
    assert all(a < b for a, b in zip(lrs, lrs[1:], strict=False))  # grows with the batch, no jump at 256


def test_lr_plan_scales_with_the_batch_and_an_absolute_lr_keeps_the_floor_below_it():
    from vmae_cli.training.parts import plan_steps

    optim = OptimRecipe(batch_size=16, epochs=10, warmup_epochs=1.0, blr=0.3, min_lr=0.05, warmup_lr=0.0)
    plan = plan_steps(optim, 160, 10, clips_per_video=1, world=2)  # global batch 32
    assert plan.peak == pytest.approx(0.3 * (32 / 256) ** 0.5)
    assert plan.schedule.min_lr == pytest.approx(0.05 * (32 / 256) ** 0.5)
    assert plan.schedule.warmup_steps == 10
    optim.batch_size = 256  # global batch 512: the linear rule
    assert plan_steps(optim, 5120, 10, clips_per_video=1, world=2).peak == pytest.approx(0.6)
    optim.batch_size = 16
    optim.lr = 2e-3  # below what min_lr alone would scale to: the cosine must still only go down
    plan = plan_steps(optim, 160, 10, clips_per_video=1, world=2)
    assert plan.schedule.min_lr == pytest.approx(2e-3 / 6)
    lrs = [plan.schedule(s) for s in range(10, plan.total + 1)]
    assert lrs[0] == pytest.approx(2e-3) and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_no_weight_decay_on_biases_norms_and_mask_token():
    from vmae_cli import VideoMAEForPreTraining

    from .models import tiny_config

    model = VideoMAEForPreTraining(tiny_config())
    groups = {g["weight_decay"]: set(g["names"]) for g in param_groups(model, 0.05)}
    assert "mask_token" in groups[0.0] and "decoder.norm.weight" in groups[0.0]
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in groups[0.0]
    assert "videomae.encoder.layer.0.attention.attention.query.weight" in groups[0.05]
    assert "videomae.embeddings.patch_embeddings.projection.weight" in groups[0.05]
    assert not no_weight_decay("encoder_to_decoder.weight", model.encoder_to_decoder.weight)


def test_recipes_parse_and_round_trip(tmp_path):
    for name in ("tiny", "small", "base"):
        recipe = load_recipe(PretrainRecipe, recipe_path(name, "pretrain"))
        assert recipe.model == name
        (tmp_path / f"{name}.toml").write_text(to_toml(recipe, "header\nline 2"))
        assert load_recipe(PretrainRecipe, tmp_path / f"{name}.toml") == recipe
    base = load_recipe(PretrainRecipe, recipe_path("base", "pretrain"))
    assert (base.mask.ratio, base.optim.blr, base.optim.betas, base.optim.weight_decay) == (
        0.9,
        1.5e-4,
        [0.9, 0.95],
        0.05,
    )
    changed = load_recipe(PretrainRecipe, None, ["optim.betas=[0.9, 0.999]", "model=small", "optim.lr=1"])
    assert changed.optim.betas == [0.9, 0.999] and changed.model == "small" and changed.optim.lr == 1.0
    with pytest.raises(RecipeError, match="run.seed must be int"):
        load_recipe(PretrainRecipe, None, ["run.seed=1.5"])
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(PretrainRecipe, None, ["optim.lr"])


def test_list_files(tmp_path):
    (tmp_path / "a b.mp4").write_bytes(b"")
    (tmp_path / "list.csv").write_text("label,path\n1,a b.mp4\n2,/abs/c.mp4\n")
    (tmp_path / "list.txt").write_text("a b.mp4 3\n# comment\n/abs/c.mp4\n")
    (tmp_path / "list.tsv").write_text("x.mp4\t1\n")
    assert list_videos(tmp_path / "list.csv") == [str(tmp_path / "a b.mp4"), "/abs/c.mp4"]
    assert list_videos(tmp_path / "list.txt") == [str(tmp_path / "a b.mp4"), "/abs/c.mp4"]
    assert list_videos(tmp_path / "list.tsv") == [str(tmp_path / "x.mp4")]


def test_epoch_sampler_is_a_pure_function_of_seed_and_epoch_and_can_start_mid_epoch():
    whole = EpochSampler(23, batch_size=3, seed=5, rank=1, world=2)
    whole.set_epoch(4)
    items = list(whole)
    assert len(items) == 3 * 3 and len(set(i for i, _, _ in items)) == 9
    late = EpochSampler(23, batch_size=3, seed=5, rank=1, world=2)
    late.set_epoch(4, start_batch=2)
    assert list(late) == items[6:]
    other_rank = EpochSampler(23, batch_size=3, seed=5, rank=0, world=2)
    other_rank.set_epoch(4)
    assert not {i for i, _, _ in other_rank} & {i for i, _, _ in items}
    whole.set_epoch(5)
    assert list(whole) != items


def test_multi_scale_crop_boxes_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, ch, cw = multi_scale_crop_box(rng, 40, 53, 32)
        assert 0 <= top and top + ch <= 40 and 0 <= left and left + cw <= 53
        assert min(ch, cw) >= int(40 * 0.66) and max(ch, cw) <= 40


def test_png_writer_makes_a_file_ffmpeg_reads(tmp_path):
    import av

    rgb = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    write_png(tmp_path / "x.png", rgb)
    with av.open(str(tmp_path / "x.png")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.array_equal(frame, rgb)


@pytest.mark.parametrize("init", [False, True], ids=["from-scratch", "init-without-frame-sampling"])
def test_checkpoints_sample_as_the_model_does(videos, tmp_path, init):
    """Every RUN/checkpoints/step-N/ carries RUN/model's preprocessor_config.json (the trained stride 2, not an
    --init model's, not the stride-4 default), so the last checkpoint embeds exactly as RUN/model does."""
    from .models import tiny_pretraining

    run = tmp_path / "run"
    flags = {
        "optim.max_steps": 4,
        "run.save_every": 2,
        "run.workers": 0,
        "run.device": "cpu",
        "run.preview_every": 0,
    }
    if init:
        flags["init"] = str(
            tiny_pretraining(tmp_path / "init")
        )  # its preprocessor_config has no frame_sampling
    run_pretraining(resolve_recipe(run, "tiny", [], flags, False), str(videos), run)
    expected = (run / "model" / "preprocessor_config.json").read_text()
    assert json.loads(expected)["frame_sampling"]["stride"] == 2
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step-2", "step-4"]
    assert all((p / "preprocessor_config.json").read_text() == expected for p in checkpoints)
    vectors = []
    for model in (run / "model", run / "checkpoints" / "step-4"):
        out = tmp_path / f"{model.name}.npy"
        with pytest.raises(SystemExit) as done:
            main(
                ["embed", str(videos / "v7.mp4"), "--model", str(model), "--out", str(out), "--dtype", "fp32"]
            )
        assert done.value.code == 0
        vectors.append(np.load(out))
    np.testing.assert_array_equal(vectors[0], vectors[1])
