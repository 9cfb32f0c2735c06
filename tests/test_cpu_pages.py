"""A memory-mapped tensor's resident pages are given back only when that loses nothing."""

import os

import numpy as np
import pytest
import safetensors.torch
import torch

from nmt_cli.checkpoint import load_model
from nmt_cli.config import DecodeConfig
from nmt_cli.cpu import gemm
from nmt_cli.cpu.int8 import int8_dynamic
from nmt_cli.cpu.pages import PAGE, _executable_mappings, _whole_pages, release_code_pages, release_file_pages
from nmt_cli.translate import translate_lines

pytestmark = pytest.mark.skipif(
    not os.access("/proc/self/pagemap", os.R_OK), reason="needs Linux's /proc/self/pagemap"
)


def present_pages(start: int, length: int) -> int:
    """How many pages of [start, start + length) this process has in memory now."""
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        entries = np.frombuffer(pagemap.read(length // PAGE * 8), dtype=np.uint64)
    return int(((entries >> np.uint64(63)) & np.uint64(1)).sum())


def resident_pages(tensor: torch.Tensor) -> int:
    """How many of the tensor's whole pages this process has in memory now."""
    return present_pages(*_whole_pages(tensor))


@pytest.fixture
def mapped(tmp_path) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64-page tensor read through a memory-mapped file, as load_model reads weights; and its values."""
    values = torch.arange(64 * PAGE // 4, dtype=torch.float32)
    safetensors.torch.save_file({"w": values}, tmp_path / "w.safetensors")
    tensor = safetensors.torch.load_file(tmp_path / "w.safetensors")["w"]
    assert torch.equal(tensor, values)  # every page read
    return tensor, values


def test_file_pages_are_given_back_and_read_again(mapped) -> None:
    tensor, values = mapped
    pages = _whole_pages(tensor)[1] // PAGE
    assert pages >= 63 and resident_pages(tensor) == pages
    assert release_file_pages(tensor) == pages * PAGE
    assert resident_pages(tensor) == 0
    assert torch.equal(tensor, values)  # read again from the file


def test_pages_written_since_mapping_are_kept(mapped) -> None:
    tensor, values = mapped
    middle = slice(len(tensor) // 2, len(tensor) // 2 + 10)
    tensor[middle] += 1  # that page becomes a private copy: dropping it would undo the write
    assert release_file_pages(tensor) == 0
    values[middle] += 1
    assert torch.equal(tensor, values)


def test_memory_of_its_own_is_left_alone() -> None:
    tensor = torch.randn(64 * PAGE // 4)
    values = tensor.clone()
    assert release_file_pages(tensor) == 0
    assert torch.equal(tensor, values)


@pytest.mark.skipif(not gemm.pack_available(), reason="decoding packs no weights without oneDNN")
def test_decoding_gives_back_the_weights_it_packed(trained) -> None:
    loaded = load_model(trained)  # memory-mapped
    model = loaded.model
    packed_sources = [model.generator.weight, model.decoder_rnn.weight_ih_l0, model.decoder_rnn.weight_hh_l0]
    plain = [load_model(trained, mapped=False).model.generator.weight]
    list(translate_lines(iter([["ein Hund läuft .", "zwei Männer"]]), loaded, DecodeConfig()))
    for weight in packed_sources:
        assert _whole_pages(weight)[1] and resident_pages(weight) == 0
    assert torch.equal(model.generator.weight, plain[0])  # the same values, read again from the file


def test_int8_gives_back_the_mapped_weights_it_replaces(trained) -> None:
    model = load_model(trained).model  # memory-mapped
    replaced = [model.generator.weight, model.decoder_rnn.weight_ih_l0]
    for weight in replaced:
        weight.sum()  # read once: its pages are resident
    assert all(resident_pages(w) > 0 for w in replaced)
    int8_dynamic(model)
    assert all(_whole_pages(w)[1] and resident_pages(w) == 0 for w in replaced)


def resident_code_pages(path_part: str) -> int:
    return sum(present_pages(start, length) for start, length in _executable_mappings(path_part))


def test_library_code_is_given_back_and_runs_again() -> None:
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib", "")
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    w = torch.randn(512, 300, generator=torch.Generator().manual_seed(1))
    before = (x @ w).log_softmax(-1)
    libtorch = os.path.join(torch_lib, "libtorch_cpu")  # idle OpenMP threads may run other libraries
    assert resident_code_pages(libtorch) > 0
    assert release_code_pages(torch_lib) > 0
    assert resident_code_pages(libtorch) == 0
    assert torch.equal((x @ w).log_softmax(-1), before)  # the code maps in again as it runs
    assert resident_code_pages(libtorch) > 0
    assert release_code_pages("/no/such/library/") == 0
