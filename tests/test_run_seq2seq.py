"""inference/run_seq2seq.py: greedy tokens equal transformers' ``generate`` for T5 (v1.0, v1.1) and BART on padded
batches, sampling follows the seed, and the command line writes one target per source."""

import pytest
import torch
from seq2seq_support import save_hf, save_t5, tiny_bart, tiny_t5
from train_support import load_script

from tencentpretrain.checkpoint import model_from_state, save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert import load_hf_bart, load_hf_t5
from tencentpretrain.generation.sampling import SamplingParams
from tencentpretrain.model import build_model

run_seq2seq = load_script("run_seq2seq", "inference")
BART_DROP = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")


def sources(seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = (17, 9, 13)
    return [torch.randint(3, 120, (n,), generator=generator).tolist() + [2] for n in lengths]


def hf_greedy(hf, rows, start, eos, pad, max_length):
    ids, seg = run_seq2seq.padded(rows, pad)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=seg, max_new_tokens=max_length, do_sample=False,
                          num_beams=1, decoder_start_token_id=start, eos_token_id=eos, pad_token_id=pad,
                          forced_bos_token_id=None, forced_eos_token_id=None, min_length=0,
                          no_repeat_ngram_size=0, repetition_penalty=1.0,
                          use_cache=False)  # its cache is sized for num_layers, not num_decoder_layers
    targets = []
    for row in out[:, 1:].tolist():  # after the start token, up to the end token
        targets.append(row[:row.index(eos)] if eos in row else row)
    return targets


@pytest.mark.parametrize("family", ["t5 v1.0", "t5 v1.1", "bart"])
def test_greedy_tokens_equal_transformers_generate(family, tmp_path):
    if family == "bart":
        hf = tiny_bart()
        ours = model_from_state(*load_hf_bart(save_hf(hf, tmp_path / "hf", drop=BART_DROP)))
        start, eos, pad = 2, 2, 1
    else:
        hf = tiny_t5(family.split()[1])
        ours = model_from_state(*load_hf_t5(save_t5(hf, tmp_path / "hf")))
        start, eos, pad = 0, 1, 0
    rows = sources()
    theirs = hf_greedy(hf, rows, start, eos, pad, 24)
    mine = run_seq2seq.generate(ours, rows, start, (eos,), pad, 24)
    assert mine == theirs
    assert any(len(t) >= 5 for t in theirs)  # something was generated to compare


def test_sampling_follows_the_seed_and_the_settings(tmp_path):
    model = model_from_state(*load_hf_t5(save_t5(tiny_t5("v1.1"), tmp_path / "hf")))
    rows = sources()
    params = SamplingParams(temperature=1.0, top_k=5, top_p=0.9)
    first = run_seq2seq.generate(model, rows, 0, (1,), 0, 12, params, torch.Generator().manual_seed(3))
    again = run_seq2seq.generate(model, rows, 0, (1,), 0, 12, params, torch.Generator().manual_seed(3))
    other = run_seq2seq.generate(model, rows, 0, (1,), 0, 12, params, torch.Generator().manual_seed(4))
    assert first == again and first != other
    assert all(len(t) <= 12 for t in first) and len({tuple(t) for t in first}) > 1


def test_command_line_writes_one_target_per_source(tmp_path, tiny_spm):
    from tencentpretrain.tokenizers import open_tokenizer

    tokenizer = open_tokenizer(tiny_spm)
    torch.manual_seed(0)
    config = ModelConfig.from_json("models/t5-v1_1/tiny_config.json", dropout=0.0)
    model = build_model(config, tokenizer.vocab_size).eval()
    save_state_dict(dict(model.state_dict()), tmp_path / "t5.bin")
    (tmp_path / "src.txt").write_text("the model reads tokens\n\n数据 模型 训练\n", encoding="utf-8")
    assert run_seq2seq.main(["--load_model_path", str(tmp_path / "t5.bin"), "--config_path",
                             "models/t5-v1_1/tiny_config.json", "--spm_model_path", str(tiny_spm),
                             "--test_path", str(tmp_path / "src.txt"), "--prediction_path", str(tmp_path / "out.txt"),
                             "--tgt_seq_length", "6", "--batch_size", "2"]) == 0
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    rows = [run_seq2seq.source_ids(tokenizer, text, 128) for text in ["the model reads tokens", "", "数据 模型 训练"]]
    expected = run_seq2seq.generate(model, rows[:2], tokenizer.pad_id, tokenizer.end_ids, tokenizer.pad_id, 6)
    expected += run_seq2seq.generate(model, rows[2:], tokenizer.pad_id, tokenizer.end_ids, tokenizer.pad_id, 6)
    assert lines == [tokenizer.decode(ids).replace("\n", "\\n") for ids in expected]


def test_a_causal_config_is_refused(tmp_path, tiny_spm):
    (tmp_path / "src.txt").write_text("x\n")
    with pytest.raises(Exception, match="decoder is null: not an encoder-decoder"):
        run_seq2seq.main(["--load_model_path", str(tmp_path / "none.bin"), "--config_path",
                          "models/llama/tiny_config.json", "--spm_model_path", str(tiny_spm),
                          "--test_path", str(tmp_path / "src.txt"), "--prediction_path", str(tmp_path / "o.txt")])
    assert not (tmp_path / "o.txt").exists()
