"""BART from our parts against transformers: a tiny random model built locally, logits compared on padded batches,
conversions both ways (bit-exact but for the two position rows Hugging Face never reads), and the traps (positions
looked up at position + 2, post-norm with layernorm_embedding, final_logits_bias) each pinned."""

import pytest
import torch
from seq2seq_support import VOCAB, both_logits, padded_batch, save_hf, tiny_bart
from train_support import load_script

from tencentpretrain.checkpoint import model_from_state
from tencentpretrain.convert import ConversionError, load_hf_bart
from tencentpretrain.convert.bart import POSITION_OFFSET, config_from_hf, ours_to_hf

DROP = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")


def converted(hf, tmp_path):
    config, state = load_hf_bart(save_hf(hf, tmp_path / "hf", drop=DROP))
    return model_from_state(config, state, "bart"), config, state



def test_logits_equal_transformers_on_padded_batches(tmp_path):
    hf = tiny_bart()
    ours, config, _ = converted(hf, tmp_path)
    assert config.layernorm_positioning == "post" and config.layernorm_eps == 1e-5 and config.has_lmtarget_bias
    batch = padded_batch(src_length=40)
    mine, theirs = both_logits(hf, ours, batch)
    assert (mine - theirs)[batch[3].bool()].abs().max() < 1e-4


def test_positions_are_offset_by_two(tmp_path):
    hf = tiny_bart()
    _, config, state = converted(hf, tmp_path)
    table = hf.model.encoder.embed_positions.weight
    assert config.max_seq_length == table.shape[0] - POSITION_OFFSET
    assert torch.equal(state["embedding.pos.embedding.weight"][0], table[2])  # our position 0 is their row 2
    with torch.no_grad():
        table[:2].normal_()  # rows 0 and 1 are never read by transformers: changing them changes nothing
    ours, _, _ = converted(hf, tmp_path / "again")
    batch = padded_batch(src_length=40)
    mine, theirs = both_logits(hf, ours, batch)
    assert (mine - theirs)[batch[3].bool()].abs().max() < 1e-4


def test_final_logits_bias_and_layernorm_embedding_count(tmp_path):
    hf = tiny_bart()
    ours, _, state = converted(hf, tmp_path)
    assert torch.equal(state["target.lm.output_layer.bias"], hf.final_logits_bias[0])
    assert ours.target["lm"].output_layer.weight is ours.tgt_embedding.word.embedding.weight
    assert ours.tgt_embedding.word is ours.embedding.word
    batch = padded_batch(src_length=40)
    for module in (ours.target["lm"].output_layer.bias, ours.tgt_embedding.layer_norm.beta):
        with torch.no_grad():
            module.zero_()
        mine, theirs = both_logits(hf, ours, batch)
        assert (mine - theirs)[batch[3].bool()].abs().max() > 1e-2


def test_hf_to_ours_to_hf_is_exact_but_for_the_unread_position_rows(tmp_path):
    hf = tiny_bart()
    config, state = load_hf_bart(save_hf(hf, tmp_path / "hf", drop=DROP))
    back = ours_to_hf(state, config)
    original = {k: v for k, v in hf.state_dict().items() if k not in DROP}
    assert set(back) == set(original)
    for name, tensor in original.items():
        if name.endswith("embed_positions.weight"):
            assert back[name][:2].eq(0).all()  # written as zeros, as TencentPretrain's converter drops them
            tensor, back[name] = tensor[2:], back[name][2:]
        assert torch.equal(back[name], tensor), name


def test_scripts_convert_both_ways_and_transformers_loads_the_export(tmp_path):
    from transformers import BartForConditionalGeneration

    hf = tiny_bart()
    to_ours = load_script("convert_bart_from_huggingface_to_tencentpretrain", "scripts").main
    to_hf = load_script("convert_bart_from_tencentpretrain_to_huggingface", "scripts").main
    source = save_hf(hf, tmp_path / "hf", drop=DROP)
    assert to_ours(["--input_model_path", str(source), "--output_model_path", str(tmp_path / "bart.bin"),
                    "--output_config_path", str(tmp_path / "bart.json")]) == 0
    assert to_hf(["--input_model_path", str(tmp_path / "bart.bin"), "--config_path", str(tmp_path / "bart.json"),
                  "--output_model_path", str(tmp_path / "back")]) == 0
    again = BartForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    src, seg, tgt_in, _ = padded_batch(src_length=40)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=seg, decoder_input_ids=tgt_in).logits
        got = again(input_ids=src, attention_mask=seg, decoder_input_ids=tgt_in).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("change, message", [
    ({"scale_embedding": True}, "scale_embedding=true is not supported"),
    ({"decoder_attention_heads": 2}, "encoder_attention_heads 4 differs from decoder_attention_heads 2"),
    ({"activation_function": "swish"}, "activation_function 'swish' is not supported"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings false is not supported"),
    ({"model_type": "t5"}, "model_type 't5' is not bart"),
])
def test_bad_bart_configs_are_refused_naming_the_key(change, message):
    with pytest.raises(ConversionError, match=message):
        config_from_hf({**tiny_bart().config.to_dict(), **change})


def test_vocabulary_is_the_embedding_rows(tmp_path):
    ours, _, _ = converted(tiny_bart(), tmp_path)
    assert ours.vocab_size == VOCAB
