"""bf16 on the CPU against fp32: training losses and logits agree within the documented tolerance.

docs/machines.md states the tolerances these tests hold; they are skipped where the CPU has no bf16 hardware
(AVX512-BF16 or AMX), where bf16 is emulated and hundreds of times slower.
"""

from __future__ import annotations

import pytest
import torch
from conftest import confident_model
from train_support import MICRO_LLAMA, load_script, losses, make_dataset, train_argv, write_config

from tencentpretrain import build_model
from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.dtypes import auto_dtype, bf16_is_faster
from tencentpretrain.hardware import cpu, parse_cpuinfo
from tencentpretrain.tokenizers import SentencePieceTokenizer
from tencentpretrain.training import build as build_module
from tencentpretrain.training.loop import train

# The documented tolerances (docs/machines.md, "bf16 on the CPU").
LOGIT_TOLERANCE = 0.05  # largest |bf16 - fp32| logit gap over the fp32 logits' std (measured: 0.015-0.023)
LOSS_TOLERANCE = 0.005  # relative difference of each training step's loss, over the first 30 steps (measured: 3e-4)

needs_bf16 = pytest.mark.skipif(not cpu().bf16, reason=f"no bf16 hardware on {cpu().kind()}: bf16 is emulated")


def micro_model(vocab: int = 400) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_dict({**MICRO_LLAMA, "vocab_size": vocab})).eval()


def relative_gap(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((other.float() - reference).abs().max() / reference.std())


@needs_bf16
def test_bf16_weights_and_autocast_logits_match_fp32():
    model = micro_model()
    src = torch.randint(0, 400, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(src)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what pretrain.py --bf16 runs
            autocast = model(src)
        weights = model.to(torch.bfloat16)(src)  # what --dtype bfloat16 loads
    assert autocast.dtype == torch.bfloat16 and weights.dtype == torch.bfloat16
    assert relative_gap(reference, autocast) < LOGIT_TOLERANCE
    assert relative_gap(reference, weights) < LOGIT_TOLERANCE
    agree = (reference.argmax(-1) == weights.float().argmax(-1)).float().mean()
    assert agree > 0.9  # the most likely token is the same almost everywhere


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_spm):
    folder = tmp_path_factory.mktemp("bf16")
    return folder, make_dataset(folder, tiny_spm), tiny_spm, write_config(folder)


def curve(setting, name: str, *extra: str) -> dict[int, float]:
    folder, dataset, spm, config = setting
    out = folder / name / "model"
    opts, info = build_module.setup(train_argv(dataset, spm, config, out, *extra, steps=30, save=30))
    run = build_module.build(opts, info)
    train(run)
    run.logger.close()
    return losses(out.with_name("model-log.jsonl"))


@needs_bf16
def test_pretrain_bf16_losses_follow_fp32(setting, capsys):
    fp32 = curve(setting, "fp32")
    bf16 = curve(setting, "bf16", "--bf16")
    assert sorted(bf16) == sorted(fp32) == list(range(1, 31))
    gaps = [abs(bf16[s] - fp32[s]) / fp32[s] for s in fp32]
    assert max(gaps) < LOSS_TOLERANCE, gaps
    assert bf16[30] < bf16[1] - 1.0  # it learns
    if not bf16_is_faster("cpu"):
        assert "bf16 matrix products run slower than fp32" in capsys.readouterr().err


def test_auto_dtype_takes_bf16_only_where_it_is_faster():
    amx = parse_cpuinfo("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    avx512_bf16 = parse_cpuinfo("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_bf16\n")
    avx2 = parse_cpuinfo("model name\t: EPYC\nflags\t\t: avx2 fma\n")
    assert auto_dtype("cpu", amx) == torch.bfloat16
    assert auto_dtype("cpu", avx512_bf16) == torch.float32  # measured 0.6x of fp32 without AMX
    assert auto_dtype("cpu", avx2) == torch.float32


@needs_bf16
def test_run_llama_in_bf16_starts_as_fp32(tiny_spm, tmp_path):
    """``run_llama.py --dtype bfloat16`` on the CPU runs, and a confident model's greedy text starts as float32's
    does (later tokens may part: a bf16 rounding can flip a near-tie, and from there the texts differ)."""
    model = confident_model(MICRO_LLAMA, SentencePieceTokenizer(tiny_spm).vocab_size)
    ModelConfig.from_dict(MICRO_LLAMA).save(tmp_path / "config.json")
    save_state_dict(model.state_dict(), tmp_path / "model.bin")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the model reads\n数据 模型\nline one\n", encoding="utf-8")
    run_llama = load_script("run_llama", "inference")
    common = ["--load_model_path", str(tmp_path / "model.bin"), "--config_path", str(tmp_path / "config.json"),
              "--spm_model_path", str(tiny_spm), "--test_path", str(prompts), "--prediction_path",
              str(tmp_path / "out.txt"), "--seq_length", "64", "--max_new_tokens", "10", "--temperature", "0",
              "--quiet", "--batch_size", "3"]
    fp32 = run_llama.main(common + ["--dtype", "float32"])
    bf16 = run_llama.main(common + ["--dtype", "bfloat16"])
    assert len(bf16) == len(fp32) == 3 and all(fp32)
    assert all(a[:1] == b[:1] for a, b in zip(fp32, bf16, strict=True)), (fp32, bf16)


def test_dtype_auto_on_an_amx_cpu(tiny_spm, tmp_path, monkeypatch):
    """``--dtype auto`` where bf16 is faster (AMX, patched in): bf16 for scoring (evaluation) and for models the
    float32 native kernel cannot decode; float32 where that kernel decodes; float32 on this kind of CPU otherwise."""
    import argparse

    from tencentpretrain import dtypes
    from tencentpretrain.generation.native import native_unavailable
    from tencentpretrain.generation.options import add_load_args, load_engine

    model = confident_model(MICRO_LLAMA, SentencePieceTokenizer(tiny_spm).vocab_size)
    ModelConfig.from_dict(MICRO_LLAMA).save(tmp_path / "config.json")
    save_state_dict(model.state_dict(), tmp_path / "model.bin")
    parser = argparse.ArgumentParser()
    add_load_args(parser)
    args = parser.parse_args(["--load_model_path", str(tmp_path / "model.bin"), "--config_path",
                              str(tmp_path / "config.json"), "--spm_model_path", str(tiny_spm), "--device", "cpu"])

    def weight_dtype(**kwargs) -> torch.dtype:
        engine, _ = load_engine(args, **kwargs)
        return engine.model.embedding.word.embedding.weight.dtype

    expected = torch.bfloat16 if cpu().amx else torch.float32
    assert weight_dtype(decoding=False) == expected
    monkeypatch.setattr(dtypes, "cpu", lambda: parse_cpuinfo("model name\t: Xeon\nflags\t\t: avx2 amx_tile\n"))
    assert weight_dtype(decoding=False) == torch.bfloat16
    native = native_unavailable(model) is None  # the kernel builds here and takes this LLaMA-shaped model
    assert weight_dtype() == (torch.float32 if native else torch.bfloat16)
    args.int8 = True
    assert weight_dtype(decoding=False) == torch.float32  # int8 keeps its float32 reference path
