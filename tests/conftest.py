"""Shared fixtures. Every test runs offline with its caches in tmp_path: nothing reaches the network."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # also inherited by the subprocesses tests start
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("VMAE_DEBUG", None)
# The suite checks numerics in fp32 on the CPU, as CI runs it; on a GPU machine `--device auto` would pick
# CUDA and bf16. CUDA paths are exercised by benchmarks/check_cuda.py instead.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

# A suite started in the background of a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored,
# and so would every vmae it starts: the Ctrl-C tests would then see runs that never stop. Python's own
# handler here makes the children start with the default disposition again (a handler does not survive exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def isolated_hf_cache(tmp_path_factory, monkeypatch):
    """Point the Hugging Face cache at an empty per-test folder (in-process and for subprocesses)."""
    import huggingface_hub.constants as constants

    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))  # vmae's cache of weight digests, too
    return home / "hub"


@pytest.fixture(params=[False, True], ids=["cpu-bf16-off", "cpu-bf16-on"])
def cpu_bf16(request, monkeypatch):
    """Runs a test as on a CPU without and with native bf16 (AVX2-only / AVX512-BF16, AMX), through the
    VMAE_CPU_BF16 switch that subprocesses inherit: for the tests whose outcome goes through `--dtype auto`."""
    monkeypatch.setenv("VMAE_CPU_BF16", "1" if request.param else "0")
    return request.param


def run_vmae(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 120):
    """Run the real `vmae` entry point in a subprocess; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vmae_cli", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def vmae_in_process(capsys, *args):
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    from vmae_cli.cli.app import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def read_metrics(run: Path) -> list[dict]:
    """A run folder's metrics.jsonl, one dict per line."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def load_script(name: str):
    """A module from scripts/ (not a package), e.g. load_script("make_synthetic")."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
