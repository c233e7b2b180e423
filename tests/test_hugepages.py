"""weights/hugepages.py: a prepared CPU model's weights move onto one huge-page mapping with their values, shapes,
strides and ties unchanged (and generate the same tokens); where transparent huge pages are off nothing moves."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import confident_model
from test_native import TINY, VOCAB
from torch import nn

from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.weights import hugepages


def tiny_model() -> nn.Module:
    return confident_model(TINY, VOCAB)


@pytest.mark.parametrize("layout", ["row", "column"])
def test_weights_move_with_their_values_strides_and_ties(layout):
    if hugepages.unavailable() is not None:
        pytest.skip(hugepages.unavailable())
    model = tiny_model()
    reference = prepare_for_inference(copy.deepcopy(model), layout=layout, huge_pages=False)
    shared = torch.randn(3, 5)
    model.extra = nn.Module()
    model.extra.first, model.extra.second = nn.Parameter(shared), nn.Parameter(shared)  # two over one storage
    before = {name: (p.data_ptr(), p.shape) for name, p in model.named_parameters()}
    prepare_for_inference(model, layout=layout)
    assert model.weight_pages.startswith("weights on 2 MiB pages")
    assert model.extra.first.data_ptr() == model.extra.second.data_ptr() != before["extra.first"][0]
    assert model.extra.first.equal(shared)
    for name, p in reference.named_parameters():
        moved = dict(model.named_parameters())[name]
        assert moved.data_ptr() != before[name][0] and moved.data_ptr() % hugepages.ALIGN == 0
        assert moved.stride() == p.stride() and moved.equal(p)
    prompts = [[1, 5, 9, 11], [1, 7]]
    assert Engine(model).generate(prompts, 12) == Engine(reference).generate(prompts, 12)


def test_nothing_moves_where_huge_pages_are_off(tmp_path, monkeypatch):
    off = tmp_path / "enabled"
    off.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "THP", off)
    model = tiny_model()
    before = [p.data_ptr() for p in model.parameters()]
    prepare_for_inference(model, layout="row")
    assert "small pages" in model.weight_pages and "off" in model.weight_pages
    assert [p.data_ptr() for p in model.parameters()] == before


def test_huge_bytes_reads_the_mapping_of_an_address(tmp_path, monkeypatch):
    smaps = tmp_path / "smaps"
    smaps.write_text("\n".join([
        "00400000-00600000 r-xp 00000000 08:01 123 /usr/bin/python3", "Size: 2048 kB", "AnonHugePages: 0 kB",
        "7f0000000000-7f0000a00000 rw-p 00000000 00:00 0", "Size: 10240 kB", "AnonHugePages: 8192 kB",
        "VmFlags: rd wr mr mw me ac hg"]))
    monkeypatch.setattr(hugepages, "SMAPS", smaps)
    assert hugepages.huge_bytes(0x7f0000100000) == 8192 * 1024
    assert hugepages.huge_bytes(0x00500000) == 0 and hugepages.huge_bytes(0x7f0000a00000) == 0  # other, none
    monkeypatch.setattr(hugepages, "SMAPS", tmp_path / "missing")
    assert hugepages.huge_bytes(0x7f0000100000) == 0
    monkeypatch.undo()
    if hugepages.unavailable() is None:  # the real mapping: what the note reports is what smaps says
        model = tiny_model()
        huge, total = (int(x) for x in hugepages.to_huge_pages(model).split(": ")[1].split(" MiB")[0].split(" of "))
        measured = hugepages.huge_bytes(next(model.parameters()).data_ptr())
        assert huge <= total and abs(huge - min(measured / 2**20, total)) < 1


def test_bench_huge_pages_runs_on_the_tiny_size():
    from bench_support import load_bench

    from tencentpretrain.generation.native import Unsupported, load_library

    try:
        load_library()
    except Unsupported as why:
        pytest.skip(f"native decoding unavailable here: {why}")
    bench = load_bench("huge_pages")
    rows = bench.main(["--size", "tiny", "--threads", "1", "2", "--repeats", "1"])
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["1", "2"]
    assert all(row.rstrip(" |").endswith("x") for row in rows[2:])
