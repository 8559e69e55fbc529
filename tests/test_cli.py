"""The `vmae` entry point: help, version, info, and how expected failures look."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmae_cli import __version__

from .conftest import REPO, run_vmae, vmae_in_process
from .models import tiny_classifier, tiny_pretraining


def test_help_does_not_import_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vmae_cli", "--help"],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 0 and "classify" in result.stdout and "embed" in result.stdout
    imported = {
        line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert "torch" not in imported and "numpy" not in imported


def test_version():
    result = run_vmae("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vmae {__version__}"


def test_info_json_for_a_folder(tmp_path):
    tiny_classifier(tmp_path / "cls")
    result = run_vmae("info", str(tmp_path / "cls"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "VideoMAEForVideoClassification" and info["size"] == "tiny"
    assert (info["frames"], info["image_size"], info["num_labels"]) == (4, [32, 32], 3)
    assert info["parameters"] == 91_779 and info["pooling"] == {
        "classify": "mean+fc_norm",
        "embed": "mean+fc_norm",
    }
    assert info["sampling"] == {
        "mode": "window",
        "frames": 4,
        "stride": 4,
        "clips": 1,
        "crops": 1,
        "pad": "repeat_last",
    }
    table = run_vmae("info", str(tmp_path / "cls"))
    assert "VideoMAEForVideoClassification" in table.stdout and "walking, running, jumping" in table.stdout


def test_info_for_a_pretraining_checkpoint(tmp_path):
    tiny_pretraining(tmp_path)
    info = json.loads(run_vmae("info", str(tmp_path), "--json").stdout)
    assert (
        info["architecture"] == "VideoMAEForPreTraining"
        and info["pooling"] == {"classify": None, "embed": "mean"}  # embed mean-pools a pre-training model
        and info["num_labels"] == 0
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header-not-config"])
def test_info_refuses_damaged_weights_like_the_other_commands(tmp_path, damage):
    """`vmae info` reads the safetensors header (no tensor data): a model classify would refuse fails here too."""
    folder = tiny_classifier(tmp_path / "cls")
    weights = folder / "model.safetensors"
    if damage == "truncated":  # as an interrupted download leaves it
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 10)
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    result = run_vmae("info", str(folder), "--json")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    says = (
        "num_hidden_layers is 3, but model.safetensors holds 2"
        if damage == "header-not-config"
        else "damaged"
    )
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "file, field, args",
    [
        ("config.json", "vendor_score", ["convert", "{model}", "{out}/converted"]),
        ("preprocessor_config.json", "vendor_gain", ["convert", "{model}", "{out}/converted"]),
        ("preprocessor_config.json", "vendor_gain", ["export", "{model}", "{out}/m.pt2"]),  # the sidecar
    ],
)
def test_model_files_are_strict_json_a_non_finite_value_is_refused(tmp_path, file, field, args):
    """config.json, preprocessor_config.json and export's sidecar are written without NaN or Infinity (not JSON):
    a field that a model file carries through (json.loads reads NaN) is refused in one line, nothing written."""
    model = tiny_classifier(tmp_path / "m")
    data = json.loads((model / file).read_text())
    (model / file).write_text(
        json.dumps({**data, field: float("nan") if file == "config.json" else float("inf")})
    )
    out = tmp_path / "out"
    out.mkdir()
    result = run_vmae(*[a.format(model=model, out=out) for a in args])
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: cannot write ") and len(result.stderr.strip().splitlines()) == 1
    assert f"{field} is {'nan' if file == 'config.json' else 'inf'}, which JSON cannot hold" in result.stderr
    assert list(out.iterdir()) == []


def test_expected_failures_are_one_line_without_traceback(tmp_path):
    for args in (["info", str(tmp_path / "missing")], ["info", str(tmp_path)], ["info", "acme/not-cached"]):
        result = run_vmae(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr  # no model: the run cannot start
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    debug = run_vmae("info", str(tmp_path), env={"VMAE_DEBUG": "1"})
    assert "Traceback" in debug.stderr


USAGE_ERRORS = [
    (["frobnicate"], "error: No such command 'frobnicate' (see vmae --help)"),
    (["--frobnicate"], "error: No such option: --frobnicate (see vmae --help)"),
    (["--verbose=3"], "error: Option '--verbose' does not take a value (see vmae --help)"),
    (["classify", "--frobnicate"], "error: No such option: --frobnicate; did you mean --force, --frames? (see vmae classify --help)"),
    (["classify", "a.mp4", "--batch-size", "abc"], "error: Invalid value for '--batch-size' / '-b': "),
    (["classify", "a.mp4", "--top-k"], "error: Option '--top-k' requires an argument (see vmae classify --help)"),
    (["embed"], "error: Missing argument 'PATH' (see vmae embed --help)"),
    (["-v", "embed", "a.mp4", "--out"], "error: Option '--out' requires an argument (see vmae embed --help)"),
    (["info"], "error: Missing argument 'MODEL' (see vmae info --help)"),
    (["info", "m", "--frobnicate"], "error: No such option: --frobnicate (see vmae info --help)"),
    (["convert", "--frobnicate"], "(see vmae convert --help)"),
    (["pretrain", "data", "--out"], "error: Option '--out' requires an argument (see vmae pretrain --help)"),
    (["finetune", "--frobnicate"], "(see vmae finetune --help)"),
    (["evaluate", "--frobnicate"], "(see vmae evaluate --help)"),
    (["probe", "--frobnicate"], "(see vmae probe --help)"),
    (["export", "--frobnicate"], "(see vmae export --help)"),
]  # fmt: skip


@pytest.mark.parametrize("args, says", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_that_says_where_to_look(args, says):
    """Not click's Usage/Try/blank/Error block: one line on stderr, exit 2, for every command and vmae itself."""
    result = run_vmae(*args)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [result.stderr.strip()], (
        result.stderr
    )
    assert says in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stderr.rstrip().endswith(" --help)"), result.stderr  # says where to look


def test_convert_of_a_text_file_is_a_clean_error(tmp_path, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("hello\n")
    code, _, err = vmae_in_process(capsys, "convert", src, tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "not a PyTorch checkpoint" in err and "internal" not in err


def test_unwritable_out_is_a_clean_error(tmp_path, capsys):
    tiny_classifier(tmp_path / "m")
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where --out's folder should be: nothing can be written under it
    code, _, err = vmae_in_process(capsys, "convert", tmp_path / "m", blocker / "out")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "internal" not in err


def test_pretrain_mask_ratio_out_of_range_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"")
    args = ["pretrain", tmp_path / "v", "-o", tmp_path / "run", "--model-config", "tiny", "-c", "tiny"]
    code, _, err = vmae_in_process(capsys, *args, "--set", "mask.ratio=2")
    assert code == 2 and err.count("\n") == 1 and "mask.ratio" in err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_model(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('model = "tiny"\n')
    for extra in (["--model-config", "small"], ["--set", "model=small"]):
        code, _, err = vmae_in_process(capsys, "pretrain", tmp_path, "-o", run, "--resume", *extra)
        assert code == 2 and err.count("\n") == 1 and "cannot change" in err, extra
    assert (run / "config.toml").read_text() == 'model = "tiny"\n'


def test_error_records_spell_parameters_as_the_terminal_line_and_the_table_gives_exit_codes():
    """A failed input's record says what its terminal line says (`--dtype` on the command line, `dtype` to
    Python), whether the error came from this process or from a decoding worker; cli/errors.py maps types to
    exit codes."""
    from vmae_cli.cli.errors import exit_code, flag, message
    from vmae_cli.errors import (
        ConfigError,
        Interrupted,
        ModelNotFoundError,
        UsageError,
        VmaeError,
        option,
        spelled,
    )
    from vmae_cli.inference.engine import LoadError
    from vmae_cli.inference.writers import error_record

    e = UsageError(f"{option('dtype')} 'x': bad; or {option('verify=False')}")
    assert error_record("a.mp4", e)["error"]["message"] == "`dtype` 'x': bad; or `verify=False`"
    with spelled(flag):
        cli_line = "--dtype 'x': bad; or --no-verify"
        assert message(e) == str(e) == error_record("a.mp4", e)["error"]["message"] == cli_line
        from_worker = LoadError("UsageError", e.render(option))  # as engine.ClipLoader sends it
        assert error_record("a.mp4", from_worker)["error"] == {"type": "UsageError", "message": cli_line}
    assert str(e) == "`dtype` 'x': bad; or `verify=False`"  # spelled() ends with its block
    codes = [exit_code(x("m")) for x in (VmaeError, UsageError, ModelNotFoundError, ConfigError, Interrupted)]
    assert codes == [1, 2, 2, 2, 130]
