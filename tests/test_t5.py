"""T5 from our parts against transformers: tiny random v1.0 and v1.1 models built locally, logits compared on padded
batches longer than the relative bias's max distance, conversions both ways bit-exact, and the traps (no 1/sqrt(d)
scale, one bias table shared by the layers, the t5 norm, v1.0's rescaled tied head) each pinned."""

import pytest
import torch
from seq2seq_support import VOCAB, both_logits, padded_batch, save_t5, tiny_t5

from tencentpretrain.checkpoint import CheckpointError, model_from_state
from tencentpretrain.convert import load_hf_t5
from tencentpretrain.convert.t5 import ours_to_hf
from tencentpretrain.layers.norm import T5LayerNorm
from tencentpretrain.layers.relative_position import relative_position_bucket
from tencentpretrain.registry import NORMS


def converted(hf, tmp_path):
    config, state = load_hf_t5(save_t5(hf, tmp_path / "hf"))
    return model_from_state(config, state, "t5"), config, state



@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_logits_equal_transformers_on_padded_long_batches(version, tmp_path):
    hf = tiny_t5(version)
    ours, config, _ = converted(hf, tmp_path)
    assert config.tie_weights is (version == "v1.0") and config.tied_head_rescale is (version == "v1.0")
    assert config.feed_forward == ("gated" if version == "v1.1" else "dense")
    batch = padded_batch()
    mine, theirs = both_logits(hf, ours, batch)
    real = batch[3].bool()
    assert (mine - theirs)[real].abs().max() < 1e-4


def test_relative_buckets_are_logarithmic_and_saturate():
    distances = torch.arange(-200, 201)
    both = relative_position_bucket(distances, bidirectional=True, buckets=32)
    causal = relative_position_bucket(distances, bidirectional=False, buckets=32)
    assert both.min() == 0 and both.max() == 31 and causal.max() == 31
    assert causal[distances > 0].eq(0).all()  # a decoder query never sees ahead: every future key is bucket 0
    assert both[distances == 5].item() == 16 + 5 and both[distances == -5].item() == 5  # exact near buckets
    assert both[distances >= 128].eq(31).all() and both[distances <= -128].eq(15).all()  # beyond max_distance
    assert len(set(both[(distances > 8) & (distances < 128)].tolist())) == 8  # logarithmic, not one per distance


def test_no_attention_scale_and_one_shared_bias_table(tmp_path):
    hf = tiny_t5("v1.0")
    ours, config, state = converted(hf, tmp_path)
    assert config.remove_attention_scale
    assert ours.encoder.transformer[0].self_attn.query_factor == pytest.approx(config.head_dim ** 0.5)
    table = ours.encoder.relative_pos_emb
    assert all(layer.relative_pos_emb is table for layer in ours.encoder.transformer)
    assert all(f"encoder.transformer.{i}.relative_pos_emb.relative_attention_bias.weight" in state for i in range(2))
    batch = padded_batch()
    ours.encoder.transformer[0].self_attn.query_factor = None  # the usual 1/sqrt(d) scale: no longer T5
    mine, theirs = both_logits(hf, ours, batch)
    assert (mine - theirs)[batch[3].bool()].abs().max() > 1e-2
    ours.encoder.transformer[0].self_attn.query_factor = config.head_dim ** 0.5
    with torch.no_grad():
        hf.encoder.block[1].layer[0].SelfAttention.q.weight.zero_()  # layer 1 attends by the bias alone
        ours.encoder.transformer[1].self_attn.linear_layers[0].weight.zero_()
    mine, theirs = both_logits(hf, ours, batch)
    assert (mine - theirs)[batch[3].bool()].abs().max() < 1e-4


def test_t5_norm_has_no_mean_and_no_bias():
    assert NORMS.get("t5") is T5LayerNorm
    norm = T5LayerNorm(6, eps=1e-6)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    expected = x / torch.sqrt((x ** 2).mean() + 1e-6)
    assert torch.allclose(norm(x), expected)
    assert not torch.allclose(norm(x), torch.nn.functional.layer_norm(x, (6,)))  # the mean is kept


def test_v1_0_tied_head_is_rescaled(tmp_path):
    hf = tiny_t5("v1.0")
    ours, config, _ = converted(hf, tmp_path)
    assert ours.target["lm"].output_layer.weight is ours.embedding.word.embedding.weight
    assert ours.target["lm"].input_scale == pytest.approx(32 ** -0.5)
    batch = padded_batch()
    ours.target["lm"].input_scale = None
    mine, theirs = both_logits(hf, ours, batch)
    assert torch.allclose(mine[batch[3].bool()] * 32 ** -0.5, theirs[batch[3].bool()], atol=1e-4)


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_hf_to_ours_to_hf_is_bit_exact(version, tmp_path):
    hf = tiny_t5(version)
    config, state = load_hf_t5(save_t5(hf, tmp_path / "hf"))
    back = ours_to_hf(state, config)
    original = {k: v for k, v in hf.state_dict().items() if not k.endswith("embed_tokens.weight")}
    if version == "v1.0":
        original.pop("lm_head.weight")
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_vocabulary_is_the_embedding_rows(tmp_path):
    ours, _, _ = converted(tiny_t5("v1.1"), tmp_path)
    assert ours.vocab_size == VOCAB and ours.tgt_embedding.word is ours.embedding.word


def test_checkpoint_with_either_name_of_the_bias_table_loads(tmp_path):
    hf = tiny_t5("v1.0")
    config, state = load_hf_t5(save_t5(hf, tmp_path / "hf"))
    batch = padded_batch()
    reference, _ = both_logits(hf, model_from_state(config, dict(state), "t5"), batch)
    layer_names = [f"encoder.transformer.{i}.relative_pos_emb.relative_attention_bias.weight" for i in range(2)]
    only_first = {k: v for k, v in state.items() if k not in layer_names and not k.startswith("tgt_embedding")}
    mine, _ = both_logits(hf, model_from_state(config, only_first, "t5"), batch)  # TencentPretrain's converter's
    assert torch.equal(mine, reference)
    differing = dict(state)
    differing[layer_names[1]] = state[layer_names[1]] + 1
    with pytest.raises(CheckpointError, match=f"{layer_names[1]} differs from encoder.relative_pos_emb"):
        model_from_state(config, differing, "t5")


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_scripts_convert_both_ways_and_transformers_loads_the_export(version, tmp_path):
    from train_support import load_script
    from transformers import T5ForConditionalGeneration

    hf = tiny_t5(version)
    to_ours = load_script("convert_t5_from_huggingface_to_tencentpretrain", "scripts").main
    to_hf = load_script("convert_t5_from_tencentpretrain_to_huggingface", "scripts").main
    source = save_t5(hf, tmp_path / "hf")
    assert to_ours(["--input_model_path", str(source), "--output_model_path", str(tmp_path / "t5.bin"),
                    "--output_config_path", str(tmp_path / "t5.json")]) == 0
    assert to_hf(["--input_model_path", str(tmp_path / "t5.bin"), "--config_path", str(tmp_path / "t5.json"),
                  "--output_model_path", str(tmp_path / "back")]) == 0
    again = T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert again.config.scale_decoder_outputs is (version == "v1.0")
    assert (again.lm_head.weight is again.shared.weight) is (version == "v1.0")
    src, seg, tgt_in, tgt_seg = padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=seg, decoder_input_ids=tgt_in).logits
        got = again(input_ids=src, attention_mask=seg, decoder_input_ids=tgt_in).logits
    assert torch.equal(got, expected)


def test_bad_t5_configs_are_refused_naming_the_key(tmp_path):
    from tencentpretrain.convert import ConversionError
    from tencentpretrain.convert.t5 import config_from_hf

    hf = tiny_t5("v1.0").config.to_dict()
    with pytest.raises(ConversionError, match="feed_forward_proj 'gated-swish' is not supported"):
        config_from_hf({**hf, "feed_forward_proj": "gated-swish"}, tied=True)
    with pytest.raises(ConversionError, match="relative_attention_max_distance 64"):
        config_from_hf({**hf, "relative_attention_max_distance": 64}, tied=True)
    with pytest.raises(ConversionError, match="scale_decoder_outputs with a head of its own"):
        config_from_hf({**hf, "scale_decoder_outputs": True}, tied=False)
    with pytest.raises(ConversionError, match="model_type 'bart' is not t5"):
        config_from_hf({**hf, "model_type": "bart"}, tied=True)
