"""`vmae export`: .pt2 and ONNX programs against the eager models, on views of real video files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from vmae_cli.inference.export import export_model
from vmae_cli.models.masking import decoder_mask, tube_mask
from vmae_cli.models.modeling import (
    ImageClassifierOutput,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEModel,
)
from vmae_cli.video.clips import load_clips
from vmae_cli.video.preprocess import Preprocessor
from vmae_cli.video.sampling import SamplingSpec

from .conftest import REPO, run_vmae, vmae_in_process
from .models import tiny_classifier, tiny_encoder, tiny_pretraining
from .videos import write_video

onnxruntime = pytest.importorskip("onnxruntime")  # the `test` extra installs it

# Runs a script with vmae_cli made unimportable, and fails if anything imported it anyway.
WITHOUT_VMAE = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "vmae_cli":
            raise ImportError("vmae_cli is blocked in this test")
sys.meta_path.insert(0, Block())
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
assert "vmae_cli" not in sys.modules
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"classifier": tiny_classifier(root / "cls"), "encoder": tiny_encoder(root / "enc")}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 40, size=(64, 48))


def views(folder, clip, count: int) -> torch.Tensor:
    """`count` distinct views of the clip: evenly spaced 4x4 windows, center crop, the model's preprocessing."""
    pre = Preprocessor.from_pretrained(folder) if (folder / "preprocessor_config.json").is_file() else None
    pre = pre or Preprocessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return load_clips(clip, SamplingSpec(frames=4, stride=4, clips=count), pre).pixel_values


def eager(kind: str, folder, dtype=torch.float32):
    """What the export must compute, from the model classes directly: logits, or embed's default vector."""
    if kind == "classifier":
        model = VideoMAEForVideoClassification.from_pretrained(folder, dtype=dtype)
        return lambda x: model(x.to(dtype)).logits.float()
    model = VideoMAEModel.from_pretrained(folder, dtype=dtype)
    return lambda x: model(x.to(dtype)).last_hidden_state.mean(1).float()


def run_saved(path):
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
    module = torch.export.load(path).module()
    return lambda x: module(x)


@pytest.mark.parametrize(
    "kind, suffix, dtype, dynamic",
    [
        ("classifier", ".pt2", "fp32", False),
        ("encoder", ".pt2", "fp32", True),
        ("classifier", ".pt2", "bf16", True),
        ("classifier", ".onnx", "fp32", True),
        ("encoder", ".onnx", "fp16", False),
    ],
)
def test_round_trip_against_eager(tmp_path, models, clip, kind, suffix, dtype, dynamic):
    out = tmp_path / f"model{suffix}"
    result = export_model(
        models[kind],
        out,
        dtype=dtype,
        dynamic_batch=dynamic,
        batch_size=1 if dynamic else 2,
        verify_clip=clip,
    )
    assert result.task == ("classify" if kind == "classifier" else "features")
    # --pool auto, resolved: without a classifier head, the encoder's token mean
    assert result.pool == (None if kind == "classifier" else "mean")
    assert result.verify["batches"] == ([1, 3] if dynamic else [2])
    assert result.verify["max_abs_diff"] <= result.verify["tolerance"]
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    reference, program = eager(kind, models[kind], torch_dtype), run_saved(out)
    x = views(models[kind], clip, 3)
    for batch in [1, 3] if dynamic else [2]:
        got, want = program(x[:batch]), reference(x[:batch])
        assert got.dtype == torch.float32 and got.shape == want.shape == (
            batch,
            3 if kind == "classifier" else 64,
        )
        tolerance = {"fp32": 1e-5, "bf16": 0.0, "fp16": 2e-3}[dtype]  # bf16 .pt2: the eager kernels
        assert (got - want).abs().max() <= tolerance * max(1.0, want.abs().max())
    if dtype != "fp32":  # half precision still tracks the fp32 model
        assert 0 < result.verify["max_abs_diff_vs_fp32"] < 0.05
    if not dynamic:  # a fixed batch is fixed
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime and torch raise their own types
            program(x[:1])


def test_cli_writes_program_and_sidecar(tmp_path, models, clip):
    out = tmp_path / "deploy" / "clf.onnx"
    result = run_vmae("export", str(models["classifier"]), str(out), "--dynamic-batch",
                      "--verify-clip", str(clip), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verify"]["clip"] == str(clip) and report["verify"]["max_abs_diff"] < 1e-5
    assert report["input"] == {"name": "pixel_values", "shape": ["batch", 4, 3, 32, 32], "dtype": "float32",
                               "layout": report["input"]["layout"]}  # fmt: skip
    assert report["output"] == {"name": "logits", "shape": ["batch", 3], "dtype": "float32"}
    sidecar = json.loads((tmp_path / "deploy" / "clf.onnx.json").read_text())
    assert sidecar["id2label"] == {"0": "walking", "1": "running", "2": "jumping"}
    assert sidecar["frame_sampling"] == {"mode": "window", "frames": 4, "stride": 4, "clips": 1, "crops": 1,
                                         "pad": "repeat_last"}  # fmt: skip
    assert sidecar["preprocessor"]["crop_size"] == {"height": 32, "width": 32}
    assert sidecar["verify"] == report["verify"]
    # the same description travels inside the file
    inside = onnxruntime.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["vmae"]
    assert {k: v for k, v in sidecar.items() if k != "verify"} == json.loads(inside)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clf.onnx", "clf.onnx.json"]


def test_refused_above_tolerance_writes_nothing(tmp_path, capsys, models, clip):
    out = tmp_path / "clf.onnx"
    code, stdout, err = vmae_in_process(capsys, "export", models["classifier"], out, "--verify-clip", clip,
                                        "--tolerance", "1e-12")  # fmt: skip
    assert code == 1 and stdout == ""
    assert err.startswith("error: verification failed") and "nothing was written" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no file, no sidecar, no temporary folder


def test_usage_errors_are_one_line(tmp_path, capsys, models, clip):
    cases = [
        (["export", models["classifier"], tmp_path / "x.onnx", "--dtype", "bf16"], "ONNX has no bfloat16"),
        (["export", models["classifier"], tmp_path / "x.bin"], "name it .pt2"),
        (["export", models["encoder"], tmp_path / "x.pt2", "--task", "classify"], "no classifier head"),
        (["export", models["classifier"], tmp_path / "x.pt2", "--verify-clip", models["classifier"] / "config.json"],
         "--verify-clip"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = vmae_in_process(capsys, *args)
        assert code != 0 and out == "" and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_the_extra_says_what_to_install(tmp_path, models):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "onnxruntime.py").write_text("raise ImportError('not installed')\n")
    pythonpath = f"{blocked}:{REPO / 'src'}"
    result = run_vmae(
        "export", str(models["classifier"]), str(tmp_path / "x.onnx"), env={"PYTHONPATH": pythonpath}
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --format onnx needs onnxruntime: pip install 'vmae[onnx]'"


def readme_script(name: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (script,) = [b for b in blocks if b.startswith(f"# {name}")]
    return script


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_readme_serving_script_runs_without_vmae(tmp_path, capsys, models, clip, suffix):
    script = tmp_path / "serve.py"
    script.write_text(readme_script("serve.py"))
    out = tmp_path / f"clf{suffix}"
    export_model(models["classifier"], out, verify=False)
    served = subprocess.run([sys.executable, "-c", WITHOUT_VMAE, str(script), str(out), str(clip)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert served.returncode == 0, served.stderr
    predictions = json.loads(served.stdout)
    code, stdout, _ = vmae_in_process(capsys, "classify", clip, "--model", models["classifier"], "--jsonl",
                                      "--dtype", "fp32")  # fmt: skip
    expected = json.loads(stdout)["predictions"]
    assert code == 0 and [p["label"] for p in predictions] == [p["label"] for p in expected]
    np.testing.assert_allclose([p["score"] for p in predictions], [p["score"] for p in expected], atol=1e-4)


def test_models_export_directly(tmp_path, models):
    """torch.export on the model classes: outputs are pytree nodes; the pre-training mask checks trace."""
    classifier = VideoMAEForVideoClassification.from_pretrained(models["classifier"])
    x = torch.randn(2, 4, 3, 32, 32)
    program = torch.export.export(classifier, (x,))
    out = program.module()(x)
    assert isinstance(out, ImageClassifierOutput) and torch.equal(out.logits, classifier(x).logits)
    torch.export.save(program, tmp_path / "c.pt2")
    assert torch.equal(torch.export.load(tmp_path / "c.pt2").module()(x).logits, out.logits)

    pretraining = VideoMAEForPreTraining.from_pretrained(tiny_pretraining(tmp_path / "pre"))
    mask = tube_mask(pretraining.config, 2, 0.75, generator=torch.Generator().manual_seed(0))
    dual = decoder_mask(mask, 0.5, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(pretraining, (x, mask), {"decoder_mask": dual}).module()
    want = pretraining(x, mask, decoder_mask=dual)
    got = program(x, mask, decoder_mask=dual)
    assert torch.equal(got.loss, want.loss) and torch.equal(got.logits, want.logits)
    # the check that every sample masks as many tokens is in the program too
    uneven = mask.clone()
    uneven[0, (~mask[0]).nonzero()[0]] = True
    with pytest.raises(RuntimeError, match="Runtime assertion failed"):
        program(x, uneven, decoder_mask=dual)
