"""Decoding one video ahead (ahead.py): while torch imports, the same frames the engine would decode, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from vmae_cli.inference.ahead import DecodedAhead
from vmae_cli.inference.options import RunOptions
from vmae_cli.video.reader import VideoReader

from .conftest import REPO, run_vmae, vmae_in_process
from .models import tiny_classifier
from .videos import remux_with_garbage, write_video


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 40, size=(64, 48), gop=10)


def _engine(classifier, **opts):
    from vmae_cli.inference.tasks import load_model

    return load_model(str(classifier), None, "classify", RunOptions(dtype="fp32", **opts))[1]


def test_the_frames_decoded_ahead_are_the_engines_and_are_used(classifier, clip):
    engine = _engine(classifier)
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions(dtype="fp32"))
    ahead._thread.join()
    assert ahead.spec == engine.spec
    held = dict(ahead._reader.held)
    with VideoReader(clip) as reader:
        wanted = np.unique(engine.spec.indices(reader.count_frames()))
        assert sorted(held) == wanted.tolist()
        assert np.array_equal(np.stack([held[j] for j in wanted.tolist()]), reader.get_frames(wanted))
    taken = ahead._reader
    (with_ahead,) = engine.run([str(clip)], ahead=ahead)
    assert taken.held == {}  # every frame was given out to the engine, none decoded twice
    (without,) = engine.run([str(clip)])
    assert with_ahead.ok and np.array_equal(with_ahead.clips.indices, without.clips.indices)
    assert (with_ahead.outputs == without.outputs).all()


def test_frames_decoded_for_another_sampling_or_path_are_not_used(classifier, clip, tmp_path):
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions(dtype="fp32"))
    ahead._thread.join()
    spec = ahead.spec
    assert ahead.take(str(clip), replace(spec, stride=1), ahead.reader_kwargs) is None
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions(dtype="fp32"))
    assert ahead.take(str(clip), spec, {**ahead.reader_kwargs, "threads": 3}) is None
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions(dtype="fp32"))
    assert ahead.take(str(tmp_path / "other.mp4"), spec, ahead.reader_kwargs) is None
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions(dtype="fp32"))
    reader = ahead.take(str(clip), spec, ahead.reader_kwargs)
    assert reader is not None and reader.held
    reader.close()


def test_the_cli_output_is_the_same_with_and_without_decoding_ahead(capsys, classifier, clip):
    """One input decodes ahead; the same input beside a second one does not: its record is the same."""
    code, out, err = vmae_in_process(
        capsys, "classify", clip, "--model", classifier, "--json", "--dtype", "fp32"
    )
    assert code == 0, err
    code, out2, err = vmae_in_process(
        capsys, "classify", clip, clip, "--model", classifier, "--json", "--dtype", "fp32", "--workers", "1"
    )
    assert code == 0, err
    assert json.loads(out)[0] == json.loads(out2)[0]


def test_torch_is_imported_after_decoding_started(classifier, clip):
    """The point of it: `vmae classify clip.mp4` starts decoding before it imports torch."""
    script = (
        "import sys\n"
        "import vmae_cli.inference.ahead as ahead\n"
        "start = ahead.DecodedAhead.start.__func__\n"
        "def spy(cls, *a):\n"
        "    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
        "    return start(cls, *a)\n"
        "ahead.DecodedAhead.start = classmethod(spy)\n"
        "from vmae_cli.cli.app import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "classify", str(clip), "--model", str(classifier), "--json"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stderr
    assert json.loads(result.stdout)[0]["ok"]


def test_a_damaged_video_warns_once_and_a_broken_one_fails_once(tmp_path, classifier, clip):
    """What decoding ahead says is said once, when the engine takes its frames; an input it cannot read is
    reported by the engine, as any other."""
    ip = write_video(
        tmp_path / "ip.mkv", 13, gop=10, options={"x264-params": "bframes=0"}
    )  # samples 0, 4, 8, 12
    damaged = remux_with_garbage(ip, tmp_path / "damaged.mkv", {12})
    result = run_vmae("classify", str(damaged), "--model", str(classifier), "--json", "--dtype", "fp32")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("did not decode") == 1, result.stderr
    assert "more like it" not in result.stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(3000))
    result = run_vmae("classify", str(broken), "--model", str(classifier), "--jsonl")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert json.loads(result.stdout)["ok"] is False


def test_close_stops_the_thread_and_a_model_not_on_this_machine_decodes_nothing(classifier, clip):
    ahead = DecodedAhead.start(str(clip), str(classifier), None, RunOptions())
    ahead.close()
    assert not ahead._thread.is_alive() and ahead._reader is None
    ahead = DecodedAhead.start(str(clip), "acme/not-downloaded", None, RunOptions())
    ahead._thread.join()
    assert ahead.spec is None and ahead._reader is None
    assert DecodedAhead.start(str(clip.parent), str(classifier), None, RunOptions()) is None  # not a file


def test_a_video_too_large_to_hold_is_left_to_the_engine(classifier, clip):
    ahead = DecodedAhead(str(clip), str(classifier), None, RunOptions(), budget=64 * 48 * 3)  # one frame
    ahead._thread.start()
    ahead._thread.join()
    assert ahead.spec is not None and ahead._reader is None


WHEN_TORCH_LOADS = """
import os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("OMP_WAIT_POLICY when torch loads:", os.environ.get("OMP_WAIT_POLICY"), file=sys.stderr)
            sys.meta_path.remove(self)
sys.meta_path.insert(0, Spy())
from vmae_cli.cli.app import main
main(sys.argv[1:])
"""


def test_torch_loads_with_threads_that_sleep_unless_the_user_says_otherwise(classifier, clip):
    """OpenMP reads OMP_WAIT_POLICY when torch loads it: classify sets it first (cli/batch.py)."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for env, expected in (({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):
        result = subprocess.run(
            [sys.executable, "-c", WHEN_TORCH_LOADS, "classify", str(clip), "--model", str(classifier)],
            capture_output=True, text=True, cwd=REPO, env={**environ, **env}, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"OMP_WAIT_POLICY when torch loads: {expected}" in result.stderr


EXIT_SPY = """
import atexit, sys, threading
atexit.register(lambda: print("atexit ran", file=sys.stderr))
import vmae_cli.cli.app as app
ended = app._end_process
def spy(code):
    print("fast exit", code, file=sys.stderr)
    ended(code)
app._end_process = spy
sys.argv = ["vmae", *sys.argv[1:]]
app.main()
"""


def test_the_console_command_skips_the_teardown_but_not_the_exit_work(classifier, clip, tmp_path):
    """After torch is loaded the command ends with os._exit: atexit handlers still run, stdout is whole, the
    exit code is the command's; a caller of main([...]) gets SystemExit as before."""
    out = tmp_path / "preds.jsonl"
    for args, code in (([str(clip), "--out", str(out)], 0), ([str(clip), str(tmp_path / "missing.mp4")], 1)):
        result = subprocess.run(
            [sys.executable, "-c", EXIT_SPY, "classify", *args, "--model", str(classifier), "--jsonl"],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert f"fast exit {code}" in result.stderr and "atexit ran" in result.stderr
        if code == 1:
            records = [json.loads(line) for line in result.stdout.splitlines()]
            assert [r["ok"] for r in records] == [True, False]
    assert json.loads(out.read_text())["ok"]
    with pytest.raises(SystemExit) as caught:
        from vmae_cli.cli.app import main

        main(["classify", str(clip), "--model", str(classifier), "--json"])
    assert caught.value.code == 0


def test_a_reader_that_goes_away_ends_the_command_quietly(classifier, clip):
    """`vmae classify ... | head -c 1`: no 'Exception ignored' or traceback on stderr."""
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    result = subprocess.run(
        [sys.executable, "-m", "vmae_cli", "classify", *[str(clip)] * 40, "--model", str(classifier), "--jsonl"],
        stdout=reader.stdin, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    reader.stdin.close()
    reader.wait()
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


# ---- in a child process (Linux, before torch is loaded: inference/forked.py) -----------------------------
needs_fork = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the child process is Linux only")


def _send_arrays(out):
    out.send("a", {"note": 1}, {"x": np.arange(10, dtype=np.float32), 3: np.zeros((0, 2), np.uint8)})
    out.send("b", None, {"y": np.full((5000, 3), 7, np.int16)})  # past one page


@needs_fork
def test_a_child_hands_back_arrays_in_order_and_ends_quietly():
    from vmae_cli.inference import forked

    child = forked.Child.start(_send_arrays)
    payload, arrays = child.receive("b")  # asked out of order: "a" is kept until asked for
    assert payload is None and np.array_equal(arrays["y"], np.full((5000, 3), 7, np.int16))
    arrays["y"][0, 0] = 1  # the parent's copy is its own to change
    payload, arrays = child.receive("a")
    assert payload == {"note": 1} and np.array_equal(arrays["x"], np.arange(10, dtype=np.float32))
    assert arrays[3].shape == (0, 2)
    assert child.receive("c") is None  # the child ended without it
    child.close()

    def fails(out):
        raise RuntimeError("never seen")

    child = forked.Child.start(fails)
    assert child.receive("a") is None
    child.close()
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # ended and reaped


@needs_fork
def test_closing_stops_a_child_that_still_works():
    import time

    from vmae_cli.inference import forked

    child = forked.Child.start(lambda out: time.sleep(60))
    start = time.monotonic()
    child.close()
    assert time.monotonic() - start < 5
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # gone and reaped


@needs_fork
@pytest.mark.parametrize("where", ["folder", "hub cache"])
def test_in_a_child_the_frames_and_weights_are_the_engines(
    classifier, clip, monkeypatch, where, isolated_hf_cache
):
    """Decoding ahead in a child (as `vmae classify` starts before torch is loaded): the engine takes the
    frames, loading takes the bf16 weights, and what comes out is what comes without them; for a model folder
    and for a Hub model in the local cache (what `vmae classify clip.mp4` runs by default)."""
    from vmae_cli.inference import forked
    from vmae_cli.models import prepared

    from .test_checkpoint import _fake_hub_cache

    if where == "hub cache":
        _fake_hub_cache(isolated_hf_cache, "acme/videomae-tiny", classifier)
        classifier = "acme/videomae-tiny"
    monkeypatch.setattr(forked, "available", lambda: True)
    opts = RunOptions(dtype="bf16")
    ahead = DecodedAhead.start(str(clip), str(classifier), None, opts)
    assert ahead._child is not None and prepared._offer
    taken = []
    monkeypatch.setattr(prepared, "read_as_bf16", None)  # only the child reads: this process must not
    take = prepared.take
    monkeypatch.setattr(prepared, "take", lambda *a: taken.append(take(*a)) or taken[-1])
    from vmae_cli.inference.tasks import load_model

    _, engine = load_model(str(classifier), None, "classify", opts)
    assert len(taken[0]) == len(engine.model.state_dict())  # every weight from the child
    (with_ahead,) = engine.run([str(clip)], ahead=ahead)
    ahead.close()
    _, plain = load_model(str(classifier), None, "classify", opts)
    (without,) = plain.run([str(clip)])
    assert with_ahead.ok and np.array_equal(with_ahead.clips.indices, without.clips.indices)
    assert torch_equal(with_ahead.outputs, without.outputs)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))


@needs_fork
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_the_console_command_gives_the_same_record_with_the_child_as_without(classifier, clip, dtype):
    """`vmae classify clip.mp4` in a fresh process decodes (and converts) in a child; two inputs do not."""
    one = run_vmae("classify", str(clip), "--model", str(classifier), "--json", "--dtype", dtype)
    two = run_vmae("classify", str(clip), str(clip), "--model", str(classifier), "--json", "--dtype", dtype,
                   "--workers", "1")  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert one.stderr == ""
    assert json.loads(one.stdout)[0] == json.loads(two.stdout)[0]


CTRL_C_IN_TORCH_IMPORT = """
import os, signal, sys
class Spy:  # Ctrl-C while torch's own modules are being imported, as a user's may come
    def find_spec(self, name, path=None, target=None):
        if name == "torch._meta_registrations":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Spy())
sys.argv = ["vmae", *sys.argv[1:]]
from vmae_cli.cli.app import main
main()
"""


def test_ctrl_c_while_torch_imports_ends_in_words_and_stops_the_child(classifier, clip):
    """It waits for the import to end (raised inside it, it can abort the process from torch's C++ start-up),
    then says what was kept, exit 130, and leaves no child process behind."""
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_TORCH_IMPORT, "classify", str(clip), "--model", str(classifier), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == (
        "error: interrupted after 0 of 1 input(s); nothing was kept on disk (results go to stdout): run with "
        "--out FILE to be able to --resume"
    )
    assert result.stdout == ""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert CTRL_C_IN_TORCH_IMPORT.splitlines()[1] not in ps  # no child of it still decoding
