"""LoRA adapters, freezing by pattern, adapter files and merging (library and scripts/merge_lora.py)."""

from pathlib import Path

import pytest
import torch
import train_support
from torch import nn

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import load_state_dict, save_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.training.freezing import PatternError, freeze_parameters, name_matches
from tencentpretrain.training.lora import (
    LoraError,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    merge_lora_state,
    read_adapter_config,
    save_adapter,
)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("self_attn.linear_layers.*", "feed_forward.linear_1")
TRAIN = ("embedding.*", "target.lm.output_layer")
Q_PROJ = "encoder.transformer.1.self_attn.linear_layers.0"


def tiny_config(**overrides) -> ModelConfig:
    settings = dict(mask="causal", layernorm_positioning="pre", target=["lm"],
                    emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, local_kv_heads_num=2,
                    layers_num=2, dropout=0.0, max_seq_length=16, embedding=("word",), layernorm="rms",
                    feed_forward="gated", hidden_act="silu", remove_transformer_bias=True,
                    remove_embedding_layernorm=True, rotary_position_embedding=True, vocab_size=50)
    return ModelConfig(**{**settings, **overrides})


def tiny_model(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides))


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """B starts at zero, which would make every merge trivially right; give it values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.1)


def batch(seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(seed))


def load_script(name: str):
    return train_support.load_script(name, "scripts")


def test_name_matching_rule():
    assert name_matches("self_attn.linear_layers.0", Q_PROJ)
    assert name_matches("linear_layers.*", Q_PROJ)
    assert name_matches("linear_layers.0", Q_PROJ + ".weight")
    assert name_matches("transformer.1", Q_PROJ)
    assert not name_matches("transformer.1", "encoder.transformer.10.self_attn.linear_layers.0")
    assert not name_matches("linear_layers.0", "encoder.transformer.1.self_attn.linear_layers.01")
    assert not name_matches("feed_forward.*", Q_PROJ)
    assert name_matches("embedding.*", "embedding.word.embedding.weight")


def test_apply_lora_keeps_base_names_and_freezes_the_rest():
    model = tiny_model()
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS, train_modules=TRAIN)
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert {k for k in keys - base_keys} == {f"{m}.lora_{ab}" for m in _adapted(model) for ab in "AB"}
    assert len(_adapted(model)) == 2 * 4  # q, k, v, linear_1 in each of 2 layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n in keys if ".lora_" in n} | {"embedding.word.embedding.weight", "target.lm.output_layer.weight"}
    assert trainable == expected


def _adapted(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def test_base_checkpoint_loads_and_fresh_adapter_changes_nothing():
    base = tiny_model().eval()
    model = tiny_model(seed=5)
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".lora_" in k for k in missing)
    model.eval()
    torch.testing.assert_close(model(batch()), base(batch()), rtol=0, atol=1e-6)


def test_optimizer_steps_change_only_trainable_parameters():
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, dropout=0.1, target_modules=TARGETS, train_modules=("target.lm.*",))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        src = batch(step)
        loss, _ = model.loss({"src": src[:, :-1], "tgt": src[:, 1:]})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "target.lm.output_layer.weight" in changed and any(n.endswith(".lora_B") for n in changed)


def test_adapter_is_small_and_holds_trainable_tensors_only():
    model = tiny_model(hidden_size=64, emb_size=64, feedforward_size=256)
    apply_lora(model, rank=2, alpha=4, target_modules=("linear_layers.0", "linear_layers.2"))
    adapter = lora_state_dict(model)
    assert adapter and all(".lora_" in k for k in adapter)
    adapter_numel = sum(t.numel() for t in adapter.values())
    query = 2 * 64 + 64 * 2  # A (rank, hidden) + B (hidden, rank)
    value = 2 * 64 + 32 * 2  # B (kv_heads * head_dim, rank) with 2 key/value heads of 16
    assert adapter_numel == 2 * (query + value)  # 2 layers
    assert adapter_numel < 0.05 * sum(t.numel() for t in model.state_dict().values())


def test_merge_lora_weights_and_logits():
    model = tiny_model()
    apply_lora(model, rank=4, alpha=16, target_modules=TARGETS)
    randomise_adapters(model)
    model.eval()
    adapted_logits = model(batch())
    module = model.get_submodule(Q_PROJ)
    expected = module.weight.detach().clone() + 4.0 * (module.lora_B.detach() @ module.lora_A.detach())
    merge_lora(model)
    assert not _adapted(model) and type(model.get_submodule(Q_PROJ)) is nn.Linear
    assert not any(".lora_" in k for k in model.state_dict())
    assert torch.equal(model.get_submodule(Q_PROJ).weight, expected)
    torch.testing.assert_close(model(batch()), adapted_logits, rtol=0, atol=1e-5)


def test_adapter_file_round_trip(tmp_path):
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS, train_modules=("embedding.*",))
    randomise_adapters(model)
    saved = save_adapter(model, tmp_path / "adapter.safetensors")
    assert (tmp_path / "adapter.lora.json").is_file()
    other = tiny_model()  # same base weights, fresh adapters and embedding
    apply_lora(other, rank=4, alpha=8, target_modules=TARGETS, train_modules=("embedding.*",))
    with torch.no_grad():
        other.embedding.word.embedding.weight.zero_()
    load_adapter(other, tmp_path / "adapter.safetensors")
    assert set(lora_state_dict(other)) == set(saved)
    model.eval()
    other.eval()
    assert torch.equal(other(batch()), model(batch()))


def test_settings_are_returned_not_stored_and_saved_beside_the_adapter(tmp_path):
    model = tiny_model()
    config = apply_lora(model, rank=4, alpha=8, dropout=0.1, target_modules=TARGETS, train_modules=("embedding.*",))
    assert (config.rank, config.alpha, config.dropout, config.target_modules) == (4, 8, 0.1, TARGETS)
    assert not hasattr(model, "lora_config")
    save_adapter(model, tmp_path / "given.bin", config)
    assert read_adapter_config(tmp_path / "given.bin") == config
    save_adapter(model, tmp_path / "shown.bin")  # the settings the adapters show: the same layers, by name
    shown = read_adapter_config(tmp_path / "shown.bin")
    assert (shown.rank, shown.alpha, shown.dropout) == (4, 8, 0.1)
    assert set(shown.target_modules) == {name for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert shown.train_modules == ("embedding.word.embedding.weight",)


def test_load_adapter_refuses_other_settings(tmp_path):
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS)
    save_adapter(model, tmp_path / "adapter.bin")
    other = tiny_model()
    apply_lora(other, rank=2, alpha=8, target_modules=TARGETS)
    with pytest.raises(LoraError, match="lora_A: file has shape"):
        load_adapter(other, tmp_path / "adapter.bin")


def test_merge_script_matches_adapted_model(tmp_path):
    base = tiny_model()
    save_state_dict(base.state_dict(), tmp_path / "base.bin")
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS, train_modules=TRAIN)
    randomise_adapters(model)
    with torch.no_grad():
        model.target["lm"].output_layer.weight.mul_(1.5)  # a fully trained module that changed
    save_adapter(model, tmp_path / "lora.bin")
    merge = load_script("merge_lora")
    argv = ["--base_model_path", str(tmp_path / "base.bin"), "--lora_model_path", str(tmp_path / "lora.bin"),
            "--output_model_path", str(tmp_path / "merged.bin")]
    assert merge.main(argv) == 0
    merged = tiny_model(seed=9)
    merged.load_state_dict(load_state_dict(tmp_path / "merged.bin"), strict=True)
    model.eval()
    merged.eval()
    torch.testing.assert_close(merged(batch()), model(batch()), rtol=0, atol=1e-5)
    assert set(load_state_dict(tmp_path / "merged.bin")) == set(base.state_dict())


def test_merge_lora_state_is_exact_and_leaves_base_alone():
    base = tiny_model().state_dict()
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS)
    randomise_adapters(model)
    adapter = lora_state_dict(model)
    original = base[f"{Q_PROJ}.weight"].clone()
    merged = merge_lora_state(base, adapter, rank=4, alpha=8)
    a, b = adapter[f"{Q_PROJ}.lora_A"], adapter[f"{Q_PROJ}.lora_B"]
    assert torch.equal(merged[f"{Q_PROJ}.weight"], original + 2.0 * (b @ a))
    assert torch.equal(base[f"{Q_PROJ}.weight"], original)


def test_merge_lora_state_errors():
    base = tiny_model().state_dict()
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS)
    adapter = lora_state_dict(model)
    with pytest.raises(LoraError, match="do not have rank 3"):
        merge_lora_state(base, adapter, rank=3, alpha=8)
    del adapter[f"{Q_PROJ}.lora_B"]
    with pytest.raises(LoraError, match="other half"):
        merge_lora_state(base, adapter, rank=4, alpha=8)
    with pytest.raises(LoraError, match="no counterpart"):
        merge_lora_state(base, {"encoder.extra.weight": torch.zeros(2)}, rank=4, alpha=8)


def test_merge_script_without_settings_needs_alpha(tmp_path, capsys):
    model = tiny_model()
    save_state_dict(model.state_dict(), tmp_path / "base.bin")
    apply_lora(model, rank=4, alpha=8, target_modules=TARGETS)
    save_state_dict(lora_state_dict(model), tmp_path / "lora.bin")  # no settings file beside it
    merge = load_script("merge_lora")
    argv = ["--base_model_path", str(tmp_path / "base.bin"), "--lora_model_path", str(tmp_path / "lora.bin"),
            "--output_model_path", str(tmp_path / "merged.bin")]
    assert run_cli(merge.main, argv) == 1
    assert "lora.lora.json" in capsys.readouterr().err and not (tmp_path / "merged.bin").exists()
    assert merge.main(argv + ["--lora_alpha", "8"]) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"target_modules": ("linear_layer.*",)}, "target_modules pattern"),
    ({"target_modules": ("linear_layers.*",), "train_modules": ("embeddings.*",)}, "train_modules pattern"),
    ({"target_modules": ("linear_layers.*",), "rank": 0}, "rank must be"),
])
def test_apply_lora_refuses_bad_settings(kwargs, message):
    model = tiny_model()
    with pytest.raises(LoraError, match=message):
        apply_lora(model, **{"rank": 4, "alpha": 8, **kwargs})
    assert all(p.requires_grad for p in model.parameters()) and not _adapted(model)


def test_freeze_parameters():
    model = tiny_model()
    frozen = freeze_parameters(model, ["embedding.*", "transformer.0"])
    assert "embedding.word.embedding.weight" in frozen and f"{Q_PROJ}.weight" not in frozen
    assert all(n.startswith(("embedding.", "encoder.transformer.0.")) for n in frozen)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(frozen)
    with pytest.raises(PatternError, match="match nothing"):
        freeze_parameters(model, ["decoder.*"])
