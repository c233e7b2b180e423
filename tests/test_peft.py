"""LoRA adapters in PEFT's format: ours loads in PEFT with the same logits, PEFT's converts to ours, merges agree,
and the commands (pretrain.py --lora_format, the two conversion scripts, merge_lora.py, run_llama.py --lora_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_support import load_script, make_dataset, train_argv, write_config

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import load_state_dict, save_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_llama
from tencentpretrain.convert.llama import LLAMA_ARCHITECTURE, hf_to_ours
from tencentpretrain.convert.peft import (
    adapter_from_peft,
    adapter_to_peft,
    read_adapter,
    read_peft_adapter,
    write_peft_adapter,
)
from tencentpretrain.training import build as build_module
from tencentpretrain.training.loop import train
from tencentpretrain.training.lora import (
    LoraError,
    LoraLinear,
    apply_lora,
    is_lora_name,
    lora_state_dict,
    merge_lora_state,
    write_adapter,
)

SIZES = dict(mask="causal", layernorm_positioning="pre", target=["lm"],
             emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, local_kv_heads_num=2, layers_num=2,
             max_seq_length=32, vocab_size=60)
TARGETS = ("linear_layers.*", "final_linear", "feed_forward.linear_gate")
TRAIN = ("embedding.*", "target.lm.output_layer")


def config(**overrides) -> ModelConfig:
    return ModelConfig.from_dict({**LLAMA_ARCHITECTURE, **SIZES, **overrides})


def src() -> torch.Tensor:
    return torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(3))


def base_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(cfg).state_dict()


def adapted(cfg: ModelConfig, state: dict, targets=TARGETS, train_modules=TRAIN):
    """Our model with ``state``, adapters on ``targets`` with random B, and the fully trained tensors moved."""
    model = build_model(cfg)
    model.load_state_dict(state)
    lora = apply_lora(model, 4, 8.0, 0.0, targets, train_modules)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.2)
        for name, param in model.named_parameters():
            if param.requires_grad and not is_lora_name(name):  # trained in full: differ from the base
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval(), lora


def hf_base(cfg: ModelConfig, state: dict, folder: Path):
    from transformers import LlamaForCausalLM

    save_hf_llama(state, cfg, folder)
    return LlamaForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_our_adapter_loads_in_peft_with_our_logits(tmp_path, tied):
    peft = pytest.importorskip("peft")
    cfg = config(tie_weights=tied)
    state = base_state(cfg)
    model, lora = adapted(cfg, state)
    write_peft_adapter(lora_state_dict(model), lora, cfg, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf_base(cfg, state, tmp_path / "hf"), tmp_path / "adapter").eval()
    from safetensors.torch import load_file

    written = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    in_peft = peft.get_peft_model_state_dict(loaded)
    assert set(in_peft) == set(written)  # nothing missing, nothing unexpected
    assert all(torch.equal(in_peft[k], written[k]) for k in written)
    with torch.no_grad():
        ours, theirs = model(src()), loaded(input_ids=src()).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_converts_to_ours_and_merges_the_same(tmp_path, rslora):
    peft = pytest.importorskip("peft")
    cfg = config()
    state = base_state(cfg)
    settings = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                               modules_to_save=["lm_head"], init_lora_weights=False, use_rslora=rslora)
    torch.manual_seed(5)
    theirs = peft.get_peft_model(hf_base(cfg, state, tmp_path / "hf"), settings)
    with torch.no_grad():
        theirs.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    theirs.save_pretrained(tmp_path / "adapter")
    adapter, lora = read_peft_adapter(tmp_path / "adapter", cfg)
    assert lora.rank == 4 and len(lora.target_modules) == 5 * cfg.layers_num
    assert lora.train_modules == ("target.lm.output_layer.weight",)
    model = build_model(cfg)
    model.load_state_dict(state)
    apply_lora(model, lora.rank, lora.alpha, 0.0, lora.target_modules, lora.train_modules)
    missing = model.load_state_dict(adapter, strict=False)
    assert not missing.unexpected_keys
    theirs.eval()
    with torch.no_grad():
        assert torch.allclose(model.eval()(src()), theirs(input_ids=src()).logits, atol=1e-5)
    merged_ours = merge_lora_state(state, adapter, lora.rank, lora.alpha)
    merged_theirs = hf_to_ours(theirs.merge_and_unload().state_dict().items(), cfg)
    assert set(merged_ours) == set(merged_theirs)
    for name, tensor in merged_ours.items():
        assert torch.allclose(tensor, merged_theirs[name], atol=1e-6), name


def test_round_trip_through_peft_is_exact():
    cfg = config()
    model, lora = adapted(cfg, base_state(cfg), targets=("transformer.1.self_attn.linear_layers.0",
                                                         "feed_forward.linear_gate"))
    adapter = lora_state_dict(model)
    tensors, settings = adapter_to_peft(adapter, lora, cfg)
    assert settings["target_modules"] == ["gate_proj", "model.layers.1.self_attn.q_proj"]  # not every layer's q
    assert settings["modules_to_save"] == ["lm_head", "model.embed_tokens"]
    back, back_lora = adapter_from_peft(tensors, json.loads(json.dumps(settings)), cfg)
    assert set(back) == set(adapter) and all(torch.equal(back[k], adapter[k]) for k in adapter)
    assert (back_lora.rank, back_lora.alpha) == (lora.rank, lora.alpha)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora = True is not supported"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not LoRA"),
    ({"r": "8"}, "needs a number 'r'"),
])
def test_peft_settings_we_do_not_implement_are_refused(change, message):
    cfg = config()
    model, lora = adapted(cfg, base_state(cfg))
    tensors, settings = adapter_to_peft(lora_state_dict(model), lora, cfg)
    with pytest.raises(LoraError, match=message):
        adapter_from_peft(tensors, {**settings, **change}, cfg, source="x/adapter")


def test_unknown_peft_tensor_is_named():
    cfg = config()
    model, lora = adapted(cfg, base_state(cfg))
    tensors, settings = adapter_to_peft(lora_state_dict(model), lora, cfg)
    tensors["base_model.model.model.layers.0.mlp.router.lora_A.weight"] = torch.zeros(4, 32)
    with pytest.raises(LoraError, match=r"x/adapter: tensor base_model\.model\.model\.layers\.0\.mlp\.router"):
        adapter_from_peft(tensors, settings, cfg, source="x/adapter")


def test_conversion_scripts_and_merge_lora_take_either_format(tmp_path):
    cfg = config()
    cfg.save(tmp_path / "config.json")
    state = base_state(cfg)
    save_state_dict(state, tmp_path / "base.bin")
    model, lora = adapted(cfg, state)
    write_adapter(lora_state_dict(model), lora, tmp_path / "lora.bin")
    to_peft = load_script("convert_lora_from_tencentpretrain_to_peft", "scripts")
    from_peft = load_script("convert_lora_from_peft_to_tencentpretrain", "scripts")
    flags = ["--config_path", str(tmp_path / "config.json")]
    assert to_peft.main(["--input_model_path", str(tmp_path / "lora.bin"), "--output_model_path",
                         str(tmp_path / "peft"), *flags]) == 0
    assert from_peft.main(["--input_model_path", str(tmp_path / "peft"), "--output_model_path",
                           str(tmp_path / "back.safetensors"), *flags]) == 0
    original, back = load_state_dict(tmp_path / "lora.bin"), load_state_dict(tmp_path / "back.safetensors")
    assert set(original) == set(back) and all(torch.equal(original[k], back[k]) for k in original)
    merge = load_script("merge_lora", "scripts")
    for name, adapter in (("ours", tmp_path / "lora.bin"), ("peft", tmp_path / "peft")):
        assert merge.main(["--base_model_path", str(tmp_path / "base.bin"), "--lora_model_path", str(adapter),
                           "--output_model_path", str(tmp_path / f"merged_{name}.bin"), *flags]) == 0
    ours, peft = load_state_dict(tmp_path / "merged_ours.bin"), load_state_dict(tmp_path / "merged_peft.bin")
    assert all(torch.equal(ours[k], peft[k]) for k in ours)
    status = run_cli(merge.main, ["--base_model_path", str(tmp_path / "base.bin"), "--lora_model_path",
                                  str(tmp_path / "peft"), "--output_model_path", str(tmp_path / "no.bin")])
    assert status == 1 and not (tmp_path / "no.bin").exists()


def test_pretrain_writes_peft_and_run_llama_reads_it(tmp_path, tiny_spm):
    """--lora_format both: the PEFT directories hold the .bin adapters' tensors; run_llama.py on the base with
    --lora_path (either format) writes what it writes on the merged checkpoint."""
    dataset = make_dataset(tmp_path, tiny_spm, lines=200)
    cfg_path = write_config(tmp_path)
    torch.manual_seed(4)
    save_state_dict(build_model(ModelConfig.from_json(cfg_path), 400).state_dict(), tmp_path / "base.bin")
    out = tmp_path / "run" / "model"
    argv = train_argv(dataset, tiny_spm, cfg_path, out, "--pretrained_model_path", str(tmp_path / "base.bin"),
                      "--use_lora", "--lora_r", "4", "--lora_format", "both", "--lora_dropout", "0",
                      "--lora_target_modules", "linear_layers.*", "feed_forward.linear_2", steps=4, save=2, lr=1e-2)
    opts, info = build_module.setup(argv)
    run = build_module.build(opts, info)
    train(run)
    run.logger.close()
    cfg = ModelConfig.from_json(cfg_path)
    for step in ("-2", "-4", ""):
        ours, lora = read_adapter(f"{out}-lora{step}.bin", cfg)
        in_peft, peft_lora = read_adapter(f"{out}-lora{step}", cfg)
        assert set(ours) == set(in_peft) and all(torch.equal(ours[k], in_peft[k]) for k in ours)
        assert (lora.rank, lora.alpha) == (peft_lora.rank, peft_lora.alpha)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the model reads\n数据 模型\n", encoding="utf-8")
    run_llama = load_script("run_llama", "inference")
    common = ["--config_path", str(cfg_path), "--spm_model_path", str(tiny_spm), "--test_path", str(prompts),
              "--prediction_path", str(tmp_path / "out.txt"), "--seq_length", "32", "--max_new_tokens", "8",
              "--temperature", "0", "--quiet", "--load_model_path"]
    merged = run_llama.main([*common, f"{out}.bin"])  # the consolidated checkpoint holds the merged weights
    base = str(tmp_path / "base.bin")
    assert run_llama.main([*common, base, "--lora_path", f"{out}-lora"]) == merged
    assert run_llama.main([*common, base, "--lora_path", f"{out}-lora.bin"]) == merged
    assert run_llama.main([*common, base]) != merged  # the adapter changed something
    status = run_cli(run_llama.main, [*common, base, "--lora_path", str(tmp_path / "nowhere")])
    assert status == 1


def test_peft_export_refused_before_training_for_a_non_llama_model(tmp_path, tiny_spm):
    dataset = make_dataset(tmp_path, tiny_spm, lines=50)
    cfg_path = write_config(tmp_path, layernorm_positioning="post")
    argv = train_argv(dataset, tiny_spm, cfg_path, tmp_path / "m", "--use_lora", "--lora_format", "peft")
    opts, info = build_module.setup(argv)
    with pytest.raises(Exception, match="LLaMA"):
        build_module.build(opts, info)
