"""The GPU paths against transformers and against the CPU: bf16/fp32 logits, greedy decoding, bf16 and fp16
training through pretrain.py, the fp16 loss-scaler skip, fused CUDA AdamW. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch
from train_support import MICRO_LLAMA, load_script, losses, make_dataset, train_argv, write_config

from tencentpretrain.checkpoint import load_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.generation import Engine, load_generation_model
from tencentpretrain.model import build_model
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.optim import build_adamw, param_groups
from tencentpretrain.training.plain_engine import PlainEngine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
VOCAB = 1000
PROMPTS = [[1, 5, 9, 33, 200, 17, 4], [1, 88, 3], [1, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409]]


def tiny_hf(folder, kv_heads: int):
    """A random transformers LLaMA saved to ``folder`` (large init so greedy choices are not near-ties)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(kv_heads)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, initializer_range=0.5,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def hf_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"hf_gpu_{request.param}")
    tiny_hf(folder, request.param)
    return folder


def hf_model(folder, dtype):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=dtype).to(CUDA).eval()


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out).float()


def test_fp32_logits_match_transformers_on_cuda(hf_dir):
    ids = torch.tensor([PROMPTS[2]], device=CUDA)
    expected = _logits(hf_model(hf_dir, torch.float32), ids)
    got = _logits(load_generation_model(hf_dir, device=CUDA, dtype=torch.float32), ids)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def test_bf16_logits_as_close_to_fp32_as_transformers_bf16(hf_dir):
    """bf16 rounds differently in every implementation: ours must be no further from the fp32 logits than
    transformers' own bf16 model is."""
    ids = torch.tensor([PROMPTS[2]], device=CUDA)
    reference = _logits(hf_model(hf_dir, torch.float32), ids)
    theirs = _logits(hf_model(hf_dir, torch.bfloat16), ids)
    ours = _logits(load_generation_model(hf_dir, device=CUDA, dtype=torch.bfloat16), ids)
    their_error = (theirs - reference).abs().max()
    our_error = (ours - reference).abs().max()
    assert our_error <= 1.5 * their_error + 1e-3 * reference.abs().max()


def test_greedy_matches_transformers_on_cuda(hf_dir):
    ours = load_generation_model(hf_dir, device=CUDA, dtype=torch.float32)
    theirs = hf_model(hf_dir, torch.float32)
    width = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long, device=CUDA)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(PROMPTS):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    expected = theirs.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=48, min_new_tokens=48,
                               pad_token_id=0, eos_token_id=None)[:, width:].tolist()
    got = Engine(ours, pad_id=0).generate(PROMPTS, 48)
    assert got == expected
    assert all(len(set(row)) > 10 for row in got)


def test_bf16_generation_runs_on_cuda(hf_dir):
    ours = load_generation_model(hf_dir, device=CUDA, dtype=torch.bfloat16)
    rows = Engine(ours, pad_id=0).generate(PROMPTS, 16)
    assert [len(row) for row in rows] == [16, 16, 16]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretrain_mixed_precision_on_cuda(tmp_path, tiny_spm, precision):
    dataset = make_dataset(tmp_path, tiny_spm)
    config = write_config(tmp_path)
    output = tmp_path / "model"
    status = load_script("pretrain").main(train_argv(dataset, tiny_spm, config, output, f"--{precision}",
                                                     "--device", "cuda", steps=30, save=30))
    assert status == 0
    logged = losses(tmp_path / "model-log.jsonl")
    assert logged[30] < logged[1] - 0.5  # it learns
    state = load_state_dict(tmp_path / "model.bin")
    assert state["embedding.word.embedding.weight"].dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in state.values())


def _engine(precision: str):
    torch.manual_seed(0)
    model = build_model(_micro_config(), 64).to(CUDA)
    optimizer = build_adamw(param_groups(model, 0.0), 1e-3, (0.9, 0.999), 1e-8, CUDA)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return model, optimizer, PlainEngine(model, optimizer, scheduler, DistInfo(device=CUDA), precision=precision)


def _micro_config() -> ModelConfig:
    return ModelConfig.from_dict(dict(MICRO_LLAMA))


def test_fp16_overflow_leaves_the_weights_and_lowers_the_scale():
    model, _, engine = _engine("fp16")
    ids = torch.randint(0, 64, (2, 16), device=CUDA)
    loss, _ = engine.forward({"src": ids[:, :-1], "tgt": ids[:, 1:]}, boundary=True)
    engine.backward(loss)
    next(model.parameters()).grad.fill_(float("inf"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    scale = engine.scaler.get_scale()
    engine.step()
    assert engine.scaler.get_scale() < scale
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


def test_cuda_adamw_is_fused_and_agrees_with_foreach():
    model, optimizer, engine = _engine("fp32")
    assert optimizer.defaults.get("fused") is True
    reference = build_model(_micro_config(), 64).to(CUDA)
    reference.load_state_dict(model.state_dict())
    ref_opt = torch.optim.AdamW(param_groups(reference, 0.0), lr=1e-3, eps=1e-8, foreach=True)
    ids = torch.randint(0, 64, (2, 16), device=CUDA)
    for net, opt in ((model, optimizer), (reference, ref_opt)):
        for _ in range(3):
            loss, _ = net.loss({"src": ids[:, :-1], "tgt": ids[:, 1:]})
            loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
