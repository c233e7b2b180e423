"""The two-stage recipe of docs/vocabulary.md on a micro model, command by command:

merge tokenizers -> extend the checkpoint -> preprocess -> stage 1 (transformer frozen) -> stage 2 (LoRA plus
embedding and head) -> merge LoRA -> convert to Hugging Face -> generate.
"""

from __future__ import annotations

import pytest
import torch
from test_vocab_extension import EN_WORDS, ZH_WORDS, processor, script, sentences, write_config

from tencentpretrain.checkpoint import LM_HEAD, WORD_EMBEDDING, load_state_dict, save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.model import build_model
from tencentpretrain.tokenizers.train import train_sentencepiece

TRAINED_IN_STAGE_1 = {WORD_EMBEDDING, LM_HEAD}


def train(dataset, spm, config, output, *extra: str) -> None:
    argv = ["--dataset_path", str(dataset), "--spm_model_path", str(spm), "--config_path", str(config),
            "--output_model_path", str(output), "--total_steps", "3", "--save_checkpoint_steps", "3",
            "--report_steps", "1", "--batch_size", "4", "--learning_rate", "1e-2", "--warmup", "0",
            "--peak_flops", "1e12", *extra]
    assert script("pretrain").main(argv) == 0


@pytest.mark.slow
def test_two_stage_recipe_end_to_end(tmp_path):
    (tmp_path / "en.txt").write_text("\n".join(sentences(EN_WORDS, 300, 0, " ")) + "\n", encoding="utf-8")
    (tmp_path / "zh.txt").write_text("\n".join(sentences(ZH_WORDS, 300, 1, "")) + "\n", encoding="utf-8")
    base_spm = train_sentencepiece(tmp_path / "en.txt", tmp_path / "base", 300)
    config = write_config(tmp_path)
    torch.manual_seed(0)
    save_state_dict(build_model(ModelConfig.from_json(config), processor(base_spm).get_piece_size()).state_dict(),
                    tmp_path / "base.bin")

    # merge, extend, preprocess
    assert script("merge_tokenizers").main(["--base_spm_model_path", str(base_spm), "--corpus_path",
                                            str(tmp_path / "zh.txt"), "--extra_vocab_size", "380",
                                            "--character_coverage", "1.0", "--output_dir", str(tmp_path / "tok")]) == 0
    spm = tmp_path / "tok" / "tokenizer.model"
    assert script("extend_vocab").main(["--input_model_path", str(tmp_path / "base.bin"), "--config_path",
                                        str(config), "--base_spm_model_path", str(base_spm), "--spm_model_path",
                                        str(spm), "--output_model_path", str(tmp_path / "ext.bin")]) == 0
    script("preprocess").main(["--corpus_path", str(tmp_path / "zh.txt"), "--spm_model_path", str(spm),
                               "--dataset_path", str(tmp_path / "data"), "--seq_length", "32",
                               "--pretrained_model_path", str(tmp_path / "ext.bin")])

    # stage 1: only the embedding and the head move
    train(tmp_path / "data", spm, config, tmp_path / "stage1", "--pretrained_model_path", str(tmp_path / "ext.bin"),
          "--freeze_patterns", "encoder")
    ext, stage1 = load_state_dict(tmp_path / "ext.bin"), load_state_dict(tmp_path / "stage1.bin")
    changed = {name for name in ext if not torch.equal(ext[name], stage1[name])}
    assert changed == TRAINED_IN_STAGE_1

    # stage 2: LoRA on attention and MLP, embedding and head in full
    train(tmp_path / "data", spm, config, tmp_path / "stage2", "--pretrained_model_path",
          str(tmp_path / "stage1.bin"), "--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules",
          "self_attn", "feed_forward", "--lora_train_modules", "embedding.word", "target.lm.output_layer")
    adapter = load_state_dict(tmp_path / "stage2-lora.bin")
    assert {n for n in adapter if not n.endswith((".lora_A", ".lora_B"))} == TRAINED_IN_STAGE_1
    assert sum(n.endswith(".lora_B") for n in adapter) == 2 * 7  # q, k, v, o, gate, up, down in 2 layers
    assert all(adapter[n].abs().sum() > 0 for n in adapter if n.endswith(".lora_B"))  # the adapters trained
    assert not torch.equal(adapter[WORD_EMBEDDING], stage1[WORD_EMBEDDING])

    # merge LoRA: the base weights did not move, so merging the adapter into stage 1 gives stage 2 exactly
    assert script("merge_lora").main(["--base_model_path", str(tmp_path / "stage1.bin"), "--lora_model_path",
                                      str(tmp_path / "stage2-lora.bin"), "--output_model_path",
                                      str(tmp_path / "final.bin")]) == 0
    final, stage2 = load_state_dict(tmp_path / "final.bin"), load_state_dict(tmp_path / "stage2.bin")
    assert final.keys() == stage2.keys() and all(torch.equal(final[k], stage2[k]) for k in final)
    assert all(torch.equal(final[k], stage1[k]) for k in final if "layer_norm" in k)

    # convert to Hugging Face, generate from both
    assert script("convert_llama_from_tencentpretrain_to_huggingface").main(
        ["--input_model_path", str(tmp_path / "final.bin"), "--config_path", str(config), "--spm_model_path",
         str(spm), "--output_model_path", str(tmp_path / "hf")]) == 0
    (tmp_path / "prompts.txt").write_text("今天\n我们喜欢\n", encoding="utf-8")
    run_llama = script("run_llama")
    common = ["--test_path", str(tmp_path / "prompts.txt"), "--max_new_tokens", "6", "--temperature", "0",
              "--seq_length", "32", "--quiet", "--device", "cpu"]
    ours = run_llama.main(["--load_model_path", str(tmp_path / "final.bin"), "--config_path", str(config),
                           "--spm_model_path", str(spm), "--prediction_path", str(tmp_path / "a.txt"), *common])
    hf = run_llama.main(["--load_model_path", str(tmp_path / "hf"), "--prediction_path", str(tmp_path / "b.txt"),
                         *common])
    assert len(ours) == 2 and ours == hf
    assert (tmp_path / "a.txt").read_text(encoding="utf-8").count("\n") == 2
