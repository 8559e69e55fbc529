"""Weights read into bf16 by numpy before torch is loaded (models/prepared.py): torch's bits exactly, nothing
from a file that is not plainly well-formed, and taken by the loader only for the same files in bf16."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vmae_cli.models import prepared
from vmae_cli.models.modeling import VideoMAEForVideoClassification

from .models import tiny_classifier


def _torch_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()


def test_the_rounding_is_torchs_bit_for_bit():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(
        np.uint32
    )  # every exponent, sign, mantissa
    special = np.array(
        [
            0,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7F7FFFFF,
            0xFF7FFFFF,
            0x00000001,
            0x007FFFFF,
            0x00008000,
            0x3F808000,
            0x3F818000,
            0x3F80_7FFF,
            0x3F80_8001,
            0x7F7F8000,
            0x0000_8000,
            0x0001_8000,
        ],
        np.uint32,
    )  # fmt: skip  (ties to even both ways, the largest finite rounding to infinity, denormals)
    for x in (special.view(np.float32), bits.view(np.float32)):
        x = x[~np.isnan(x)]  # NaN is left to torch: its kernels set the bits their own way
        for part in (x[:7], x):  # torch's scalar and vectorised paths
            assert np.array_equal(prepared.bf16_bits(part), _torch_bf16(part))


@pytest.fixture()
def checkpoint(tmp_path):
    return tiny_classifier(tmp_path / "model") / "model.safetensors"


def test_a_checkpoint_read_by_numpy_is_the_one_torch_loads(checkpoint, tmp_path):
    arrays = prepared.read_as_bf16(checkpoint)
    state = load_file(checkpoint)
    assert arrays.keys() == state.keys()
    for name, tensor in state.items():
        assert np.array_equal(arrays[name], tensor.to(torch.bfloat16).view(torch.int16).numpy()), name
    # a tensor with a NaN is left to torch; bf16 tensors need no converting; the others are read as before
    state["classifier.weight"][0, 0] = float("nan")
    state["classifier.bias"] = state["classifier.bias"].to(torch.bfloat16)
    save_file(state, tmp_path / "mixed.safetensors")
    mixed = prepared.read_as_bf16(tmp_path / "mixed.safetensors")
    assert mixed.keys() == state.keys() - {"classifier.weight", "classifier.bias"}
    assert all(np.array_equal(mixed[k], arrays[k]) for k in mixed)


def _write(path, header, data: bytes, length: int | None = None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(
    "header, data, length",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12),  # header past the end
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None),  # data cut short
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None),  # shape against size
        ({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None),  # not floating point
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None),  # overlapping
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None),  # a gap
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None),  # negative
        ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, b"\0" * 8, None),  # not an int
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None),  # no offsets
        (["a", "list"], b"", None),
        ({"a": "F32"}, b"", None),
    ],
)  # fmt: skip
def test_a_file_that_is_not_plainly_well_formed_gives_nothing(tmp_path, header, data, length):
    assert prepared.read_as_bf16(_write(tmp_path / "bad.safetensors", header, data, length)) == {}


def test_garbage_a_changed_file_and_one_past_the_limit_give_nothing(checkpoint, tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(np.random.default_rng(1).bytes(5000))
    assert prepared.read_as_bf16(garbage) == {}
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert prepared.read_as_bf16(tmp_path / "empty.safetensors") == {}
    before = prepared.identity(checkpoint)
    os.utime(checkpoint, ns=(before[3] + 10**9, before[3] + 10**9))
    assert prepared.read_as_bf16(checkpoint, before) == {}  # not the file that was asked for any more
    assert prepared.read_as_bf16(checkpoint, prepared.identity(checkpoint))
    monkeypatch.setattr(prepared, "MAX_BYTES", 1000)
    assert prepared.read_as_bf16(checkpoint) == {}


def test_the_loader_takes_an_offer_only_for_the_same_files_in_bf16(checkpoint):
    folder = checkpoint.parent
    plain = VideoMAEForVideoClassification.from_pretrained(folder, dtype=torch.bfloat16)
    arrays = prepared.read_as_bf16(checkpoint)

    def offer(arrays=arrays):  # as the child does: the file's identity when it was read
        keys = [prepared.identity(checkpoint)]
        prepared.offer(lambda: (keys, arrays))

    offer()
    taken = VideoMAEForVideoClassification.from_pretrained(folder, dtype=torch.bfloat16)
    for (name, p), q in zip(taken.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    zeros = {k: np.zeros_like(v) for k, v in arrays.items()}  # what it takes shows
    offer(zeros)
    assert not VideoMAEForVideoClassification.from_pretrained(
        folder, dtype=torch.bfloat16
    ).classifier.weight.any()
    offer(zeros)  # the model loads in fp32: the offer is not used, and used up
    fp32 = VideoMAEForVideoClassification.from_pretrained(folder)
    assert torch.equal(fp32.classifier.weight, load_file(checkpoint)["classifier.weight"])
    assert VideoMAEForVideoClassification.from_pretrained(
        folder, dtype=torch.bfloat16
    ).classifier.weight.any()
    offer(zeros)
    os.utime(checkpoint)  # changed since it was read
    assert VideoMAEForVideoClassification.from_pretrained(
        folder, dtype=torch.bfloat16
    ).classifier.weight.any()
    offer({**zeros, "classifier.weight": np.zeros((1, 1), np.int16)})  # shapes that are not the file's
    assert VideoMAEForVideoClassification.from_pretrained(
        folder, dtype=torch.bfloat16
    ).classifier.weight.any()
    offer(zeros)
    prepared.withdraw(prepared._offer[0])
    assert VideoMAEForVideoClassification.from_pretrained(
        folder, dtype=torch.bfloat16
    ).classifier.weight.any()
