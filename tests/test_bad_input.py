"""Every command the README and docs show, against every kind of broken file: a message, never a traceback.

The table is ``COMMANDS`` (one row per command line) crossed with ``BROKEN`` (the broken files of each kind of
input). For every row and every input flag, each broken file of that flag's kind replaces the good one, and the
command must:

- exit with a non-zero status,
- print no ``Traceback``,
- name the broken file's path and the flag in its message,
- leave nothing at its output paths (each case writes into an empty folder of its own, which must stay empty).

Every row also runs once with all inputs good and must succeed (exit 0), so a case cannot pass by failing for
another reason (rows with ``serves=True`` run until stopped and skip that run).

All cases run in one subprocess (``tests/cli_driver.py``: each script run as ``__main__`` with its output captured at
the file-descriptor level, torch imported once); ``test_entry_points_in_their_own_process`` runs one case per
script as a real ``python script.py`` for fidelity, and ``test_launched_ranks_end_cleanly`` a bad checkpoint under
torchrun and deepspeed.

To add a command: append a ``Command`` to ``COMMANDS`` naming its script, each input flag with its kind (a key of
``BROKEN``) and its good artefact (a key of the dict ``build_good`` returns; add one there if needed), its output
flags and any other flags. To add a kind of broken file: add a builder to ``BROKEN[kind]``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import generated_lines
from train_support import MICRO_LLAMA, ROOT, make_dataset, subprocess_env, train_argv, write_config

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.convert import save_hf_bart, save_hf_bert, save_hf_gpt2, save_hf_llama, save_hf_t5
from tencentpretrain.convert.keymap import invert, rename
from tencentpretrain.convert.meta import META_TO_OURS
from tencentpretrain.convert.peft import write_peft_adapter
from tencentpretrain.training.loop import main as pretrain
from tencentpretrain.training.lora import apply_lora, lora_config_of, lora_state_dict, save_adapter

VOCAB = 400  # the tiny_spm fixture's


@dataclass(frozen=True)
class Command:
    """One command line of the README/docs.

    Attributes:
        name: the row's id.
        script: path from the repository root.
        inputs: flag -> (kind of input, the good artefact: a key of the dict ``build_good`` returns).
        outputs: flag -> name of what it writes (inside the case's own empty folder).
        extra: further flags, the same in every case.
        serves: runs until stopped when every input is good (a server): no all-good run.
        requires: optional packages the command needs; its cases skip without them.
    """

    name: str
    script: str
    inputs: dict[str, tuple[str, str]]
    outputs: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    serves: bool = False
    requires: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in self.requires)


MODEL = {"--load_model_path": ("checkpoint", "checkpoint"), "--config_path": ("json", "config"),
         "--spm_model_path": ("spm", "spm")}
GENERATE = ("--seq_length", "24", "--max_new_tokens", "4", "--temperature", "0", "--quiet")

COMMANDS = [
    Command("preprocess_lm", "preprocess.py",
            {"--corpus_path": ("corpus", "corpus"), "--spm_model_path": ("spm", "spm"),
             "--special_tokens_path": ("json", "special_tokens")},
            {"--dataset_path": "dataset"}, ("--seq_length", "16")),
    Command("preprocess_alpaca", "preprocess.py",
            {"--corpus_path": ("alpaca", "alpaca"), "--spm_model_path": ("spm", "spm")},
            {"--dataset_path": "dataset"}, ("--data_processor", "alpaca", "--seq_length", "32")),
    Command("pretrain", "pretrain.py",
            {"--dataset_path": ("dataset", "dataset"), "--spm_model_path": ("spm", "spm"),
             "--config_path": ("json", "config"), "--pretrained_model_path": ("checkpoint", "checkpoint"),
             "--dev_dataset_path": ("dataset", "dataset")},
            {"--output_model_path": "m"},
            ("--total_steps", "1", "--save_checkpoint_steps", "1", "--batch_size", "2", "--peak_flops", "1e12")),
    Command("pretrain_resume", "pretrain.py",
            {"--dataset_path": ("dataset", "dataset"), "--spm_model_path": ("spm", "spm"),
             "--config_path": ("json", "config"), "--resume_from_checkpoint": ("state", "state")},
            {"--output_model_path": "m"},
            ("--total_steps", "2", "--save_checkpoint_steps", "1", "--batch_size", "2", "--peak_flops", "1e12")),
    Command("convert_llama_hf_to_tp", "scripts/convert_llama_from_huggingface_to_tencentpretrain.py",
            {"--input_model_path": ("hf_dir", "hf_llama")}, {"--output_model_path": "llama.bin"}),
    Command("convert_llama_tp_to_hf", "scripts/convert_llama_from_tencentpretrain_to_huggingface.py",
            {"--input_model_path": ("checkpoint", "checkpoint"), "--config_path": ("json", "config"),
             "--spm_model_path": ("spm", "spm")}, {"--output_model_path": "hf"}),
    Command("convert_llama_meta_to_tp", "scripts/convert_llama_to_tencentpretrain.py",
            {"--input_model_path": ("meta_dir", "meta_llama")}, {"--output_model_path": "llama.bin"}),
    Command("convert_gpt2_hf_to_tp", "scripts/convert_gpt2_from_huggingface_to_tencentpretrain.py",
            {"--input_model_path": ("hf_dir", "hf_gpt2")}, {"--output_model_path": "gpt2.bin"}),
    Command("convert_gpt2_tp_to_hf", "scripts/convert_gpt2_from_tencentpretrain_to_huggingface.py",
            {"--input_model_path": ("checkpoint", "gpt2"), "--config_path": ("json", "gpt2_config")},
            {"--output_model_path": "hf"}),
    Command("convert_bert_hf_to_tp", "scripts/convert_bert_from_huggingface_to_tencentpretrain.py",
            {"--input_model_path": ("hf_dir", "hf_bert")}, {"--output_model_path": "bert.bin"}),
    Command("convert_bert_tp_to_hf", "scripts/convert_bert_from_tencentpretrain_to_huggingface.py",
            {"--input_model_path": ("checkpoint", "bert"), "--config_path": ("json", "bert_config")},
            {"--output_model_path": "hf"}),
    Command("convert_t5_hf_to_tp", "scripts/convert_t5_from_huggingface_to_tencentpretrain.py",
            {"--input_model_path": ("hf_dir", "hf_t5")}, {"--output_model_path": "t5.bin"}),
    Command("convert_t5_tp_to_hf", "scripts/convert_t5_from_tencentpretrain_to_huggingface.py",
            {"--input_model_path": ("checkpoint", "t5"), "--config_path": ("json", "t5_config")},
            {"--output_model_path": "hf"}),
    Command("convert_bart_hf_to_tp", "scripts/convert_bart_from_huggingface_to_tencentpretrain.py",
            {"--input_model_path": ("hf_dir", "hf_bart")}, {"--output_model_path": "bart.bin"}),
    Command("convert_bart_tp_to_hf", "scripts/convert_bart_from_tencentpretrain_to_huggingface.py",
            {"--input_model_path": ("checkpoint", "bart"), "--config_path": ("json", "bart_config")},
            {"--output_model_path": "hf"}),
    Command("run_seq2seq", "inference/run_seq2seq.py",
            {"--load_model_path": ("checkpoint", "t5"), "--config_path": ("json", "t5_config"),
             "--vocab_path": ("vocab", "bert_vocab"), "--test_path": ("prompts", "cloze")},
            {"--prediction_path": "out.txt"}, ("--tgt_seq_length", "4")),
    Command("run_fill_mask", "inference/run_fill_mask.py",
            {"--load_model_path": ("checkpoint", "bert"), "--config_path": ("json", "bert_config"),
             "--tokenizer_path": ("vocab", "bert_vocab"), "--test_path": ("prompts", "cloze")},
            {"--prediction_path": "out.jsonl"}),
    Command("merge_lora", "scripts/merge_lora.py",
            {"--base_model_path": ("checkpoint", "checkpoint"), "--lora_model_path": ("checkpoint", "adapter")},
            {"--output_model_path": "merged.bin"}),
    Command("merge_lora_peft", "scripts/merge_lora.py",
            {"--base_model_path": ("checkpoint", "checkpoint"), "--lora_model_path": ("peft_dir", "peft_adapter"),
             "--config_path": ("json", "config")}, {"--output_model_path": "merged.bin"}),
    Command("convert_lora_tp_to_peft", "scripts/convert_lora_from_tencentpretrain_to_peft.py",
            {"--input_model_path": ("checkpoint", "adapter"), "--config_path": ("json", "config")},
            {"--output_model_path": "peft"}),
    Command("convert_lora_peft_to_tp", "scripts/convert_lora_from_peft_to_tencentpretrain.py",
            {"--input_model_path": ("peft_dir", "peft_adapter"), "--config_path": ("json", "config")},
            {"--output_model_path": "lora.bin"}),
    Command("train_tokenizer", "scripts/train_tokenizer.py", {"--corpus_path": ("corpus", "corpus")},
            {"--model_prefix": "spm"}, ("--vocab_size", "300")),
    Command("plot_loss", "scripts/plot_loss.py", {"--log_path": ("log", "log")}, {"--output_path": "loss.png"}),
    Command("run_llama", "inference/run_llama.py", {**MODEL, "--test_path": ("prompts", "prompts")},
            {"--prediction_path": "out.txt"}, GENERATE),
    Command("run_llama_hf_dir", "inference/run_llama.py",
            {"--load_model_path": ("hf_dir", "hf_llama"), "--test_path": ("prompts", "prompts")},
            {"--prediction_path": "out.txt"}, GENERATE),
    Command("server", "inference/server.py", MODEL, {}, ("--port", "0"), serves=True),
    Command("evaluate_perplexity", "scripts/evaluate.py", {**MODEL, "--corpus_path": ("corpus", "corpus")},
            {"--output_path": "ppl.json"}, ("--task", "perplexity", "--seq_length", "16", "--batch_size", "2")),
    Command("evaluate_choice", "scripts/evaluate.py", {**MODEL, "--test_path": ("choice", "choice")},
            {"--output_path": "choice.json"}, ("--task", "choice", "--shots", "0")),
    Command("merge_tokenizers", "scripts/merge_tokenizers.py",
            {"--base_spm_model_path": ("spm", "spm"), "--extra_spm_model_path": ("spm", "spm")},
            {"--output_dir": "merged"}),
    Command("extend_vocab", "scripts/extend_vocab.py",
            {"--input_model_path": ("checkpoint", "checkpoint"), "--config_path": ("json", "config"),
             "--base_spm_model_path": ("spm", "spm"), "--spm_model_path": ("spm", "spm")},
            {"--output_model_path": "extended.bin", "--output_config_path": "extended.json"}),
    Command("tokenizer_stats", "scripts/tokenizer_stats.py",
            {"--corpus_path": ("corpus", "corpus"), "--spm_model_path": ("spm", "spm")}),
    Command("convert_llama_tp_to_gguf", "scripts/convert_llama_from_tencentpretrain_to_gguf.py",
            {"--input_model_path": ("checkpoint", "checkpoint"), "--config_path": ("json", "config"),
             "--spm_model_path": ("spm", "spm")}, {"--output_model_path": "model.gguf"},
            ("--outtype", "q8_0", "--template", "alpaca"), requires=("gguf",)),
    Command("convert_llama_gguf_to_tp", "scripts/convert_llama_from_gguf_to_tencentpretrain.py",
            {"--input_model_path": ("gguf", "gguf")},
            {"--output_model_path": "model.bin", "--output_spm_model_path": "tokenizer.model"}, requires=("gguf",)),
    Command("run_llama_cpp", "inference/run_llama_cpp.py",
            {"--load_model_path": ("gguf", "gguf"), "--test_path": ("prompts", "prompts")},
            {"--prediction_path": "out.txt"}, ("--max_new_tokens", "4", "--temperature", "0", "--seq_length", "32"),
            requires=("gguf", "llama_cpp")),
]


# ------------------------------------------------------------------------------------------------ broken files
def zero_bytes(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(b"")
    return folder / name


def truncated(source: Path, folder: Path, name: str | None = None) -> Path:
    data = source.read_bytes()
    path = folder / (name or source.name)
    path.write_bytes(data[:len(data) // 2])
    return path


def random_bytes(folder: Path, name: str, size: int = 4096) -> Path:
    path = folder / name
    path.write_bytes(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size),
                                   dtype=torch.uint8).numpy().tobytes())
    return path


def garbled_safetensors(source: Path, folder: Path) -> Path:
    """``source`` as safetensors, its 8-byte header length and the start of its JSON header overwritten."""
    path = folder / "model.safetensors"
    save_state_dict(torch.load(source, weights_only=True), path)
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path


def directory(folder: Path, name: str) -> Path:
    (folder / name).mkdir()
    return folder / name


def text_file(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def list_pickle(folder: Path) -> Path:
    torch.save([torch.zeros(2)], folder / "model.bin")
    return folder / "model.bin"


def broken_dataset(source: Path, folder: Path, damage: Callable[[Path], None]) -> Path:
    path = folder / "dataset"
    shutil.copytree(source, path)
    damage(path)
    return path


def broken_hf_dir(source: Path, folder: Path, damage: Callable[[Path], Path]) -> tuple[Path, Path]:
    """A copy of the directory ``source`` (a model, a training state) with one file damaged: (the directory, the
    damaged file)."""
    path = folder / source.name
    shutil.copytree(source, path)
    return path, damage(path)


def garble_weights(path: Path) -> Path:
    return garbled_in_place(path / "model.safetensors")


def garbled_in_place(weights: Path) -> Path:
    """``weights`` with its first 16 bytes (the safetensors header length) made nonsense."""
    data = bytearray(weights.read_bytes())
    data[:16] = b"\xff" * 16
    weights.write_bytes(bytes(data))
    return weights


def truncate_weights(path: Path) -> Path:
    return truncated(path / "model.safetensors", path)


def config_as_list(path: Path) -> Path:
    (path / "config.json").write_text("[1, 2, 3]\n")
    return path / "config.json"


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 - 1])


NOT_UTF8 = b"a fine first line\nthe second \xff\xfe line is not UTF-8\nthird\n"

# kind -> {variant: builder(the flag's good input, an empty folder) -> the broken path, or (the path given to the
# flag, the damaged file inside it that the message must name)}
BROKEN: dict[str, dict[str, Callable[[dict, Path], Path]]] = {
    "checkpoint": {
        "zero_byte_bin": lambda src, d: zero_bytes(d, "model.bin"),
        "truncated_bin": lambda src, d: truncated(src, d),
        "random_bytes_bin": lambda src, d: random_bytes(d, "model.bin"),
        "list_pickle_bin": lambda src, d: list_pickle(d),
        "garbled_safetensors": lambda src, d: garbled_safetensors(src, d),
        "directory": lambda src, d: directory(d, "model.bin"),
        "missing": lambda src, d: d / "model.bin",
    },
    "spm": {
        "random_bytes_model": lambda src, d: random_bytes(d, "tokenizer.model"),
        "zero_byte_model": lambda src, d: zero_bytes(d, "tokenizer.model"),
        "directory": lambda src, d: directory(d, "tokenizer.model"),
        "missing": lambda src, d: d / "tokenizer.model",
    },
    "json": {  # a JSON object file: a model config, special tokens
        "json_list": lambda src, d: text_file(d, "config.json", b'[{"emb_size": 64}]\n'),
        "invalid_json": lambda src, d: text_file(d, "config.json", b'{"emb_size": 64,\n'),
        "not_utf8": lambda src, d: text_file(d, "config.json", b'{"emb_size": 64,\n "x": "\xff"}\n'),
        "directory": lambda src, d: directory(d, "config.json"),
        "missing": lambda src, d: d / "config.json",
    },
    "dataset": {
        "truncated_tokens": lambda src, d: broken_dataset(src, d, lambda p: truncate_file(p / "tokens.bin")),
        "truncated_index": lambda src, d: broken_dataset(src, d, lambda p: truncate_file(p / "index.bin")),
        "meta_json_list": lambda src, d: broken_dataset(src, d, lambda p: (p / "meta.json").write_text("[]")),
        "file_not_directory": lambda src, d: zero_bytes(d, "dataset"),
    },
    "hf_dir": {
        "garbled_safetensors": lambda src, d: broken_hf_dir(src, d, garble_weights),
        "truncated_safetensors": lambda src, d: broken_hf_dir(src, d, truncate_weights),
        "config_json_list": lambda src, d: broken_hf_dir(src, d, config_as_list),
    },
    "peft_dir": {
        "garbled_safetensors": lambda src, d: broken_hf_dir(src, d, lambda p: garbled_in_place(
            p / "adapter_model.safetensors")),
        "truncated_safetensors": lambda src, d: broken_hf_dir(
            src, d, lambda p: truncated(p / "adapter_model.safetensors", p)),
        "config_json_list": lambda src, d: broken_hf_dir(src, d, lambda p: text_file(p, "adapter_config.json",
                                                                                       b"[1, 2]\n")),
    },
    "meta_dir": {
        "truncated_pth": lambda src, d: broken_hf_dir(
            src, d, lambda p: truncated(p / "consolidated.00.pth", p)),
        "params_json_list": lambda src, d: broken_hf_dir(
            src, d, lambda p: text_file(p, "params.json", b"[64, 4, 2]")),
    },
    "state": {  # a training-state directory <output>/<step>/ (plain engine)
        "truncated_engine": lambda src, d: broken_hf_dir(src, d, lambda p: truncated(p / "engine.pt", p)),
        "truncated_rank_state": lambda src, d: broken_hf_dir(src, d, lambda p: truncated(p / "rank0.pt", p)),
        "random_bytes_rank_state": lambda src, d: broken_hf_dir(src, d, lambda p: random_bytes(p, "rank0.pt")),
        "empty_directory": lambda src, d: directory(d, src.name),
    },
    "corpus": {
        "not_utf8": lambda src, d: text_file(d, "corpus.txt", NOT_UTF8),
        "directory": lambda src, d: directory(d, "corpus.txt"),
    },
    "alpaca": {
        "not_utf8": lambda src, d: text_file(d, "alpaca.json", b'[{"instruction": "a\xff", "output": "b"}]'),
        "truncated_array": lambda src, d: truncated(src, d),
        "directory": lambda src, d: directory(d, "alpaca.json"),
    },
    "vocab": {  # a WordPiece vocab.txt
        "not_utf8": lambda src, d: text_file(d, "vocab.txt", b"[PAD]\n[UNK]\n\xff\n"),
        "missing": lambda src, d: d / "vocab.txt",
    },
    "prompts": {
        "not_utf8": lambda src, d: text_file(d, "prompts.txt", NOT_UTF8),
        "directory": lambda src, d: directory(d, "prompts.txt"),
    },
    "choice": {  # a C-Eval CSV file
        "not_utf8": lambda src, d: text_file(d, src.name, b"id,question,A,B,C,D,answer\n0,q\xff,a,b,c,d,A\n"),
        "wrong_header": lambda src, d: text_file(d, src.name, b"id,question,A,B,answer\n0,q,a,b,A\n"),
        "answer_not_a_letter": lambda src, d: text_file(d, src.name, b"id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n"),
        "zero_byte": lambda src, d: zero_bytes(d, src.name),
    },
    "gguf": {
        "zero_byte": lambda src, d: zero_bytes(d, "model.gguf"),
        "truncated": lambda src, d: truncated(src, d),
        "random_bytes": lambda src, d: random_bytes(d, "model.gguf"),
        "directory": lambda src, d: directory(d, "model.gguf"),
    },
    "log": {
        "not_utf8": lambda src, d: text_file(d, "log.jsonl", b'{"step": 1, "loss": 2.0}\n\xff\n'),
        "truncated_record": lambda src, d: text_file(d, "log.jsonl", b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo'),
        "directory": lambda src, d: directory(d, "log.jsonl"),
    },
}


# ------------------------------------------------------------------------------------------------ good artefacts
def build_good(folder: Path, spm: Path) -> dict[str, Path]:
    """Every good input the rows name: tiny models (LLaMA and GPT-2, ours, Hugging Face, Meta), data and logs."""
    torch.manual_seed(0)
    good = {"spm": spm, "config": write_config(folder), "gpt2_config": ROOT / "models/gpt2/tiny_config.json",
            "bert_config": ROOT / "models/bert/tiny_config.json", "t5_config": ROOT / "models/t5/tiny_config.json",
            "bart_config": ROOT / "models/bart/tiny_config.json"}
    llama = build_model(ModelConfig.from_json(good["config"]), VOCAB)
    good["checkpoint"] = folder / "model.bin"
    save_state_dict(llama.state_dict(), good["checkpoint"])
    good["hf_llama"] = folder / "hf_llama"
    save_hf_llama(llama.state_dict(), ModelConfig.from_json(good["config"]), good["hf_llama"], spm_model_path=spm)
    good["meta_llama"] = folder / "meta_llama"
    good["meta_llama"].mkdir()
    meta_names = invert(META_TO_OURS)
    torch.save({rename(k, meta_names): v for k, v in llama.state_dict().items()},
               good["meta_llama"] / "consolidated.00.pth")
    (good["meta_llama"] / "params.json").write_text(json.dumps({
        "dim": MICRO_LLAMA["hidden_size"], "n_heads": MICRO_LLAMA["heads_num"], "n_layers": MICRO_LLAMA["layers_num"],
        "norm_eps": 1e-6, "vocab_size": -1}))
    gpt2_config = ModelConfig.from_json(good["gpt2_config"])
    gpt2 = build_model(gpt2_config, VOCAB)
    good["gpt2"] = folder / "gpt2.bin"
    save_state_dict(gpt2.state_dict(), good["gpt2"])
    good["hf_gpt2"] = folder / "hf_gpt2"
    save_hf_gpt2(gpt2.state_dict(), gpt2_config, good["hf_gpt2"])
    bert_config = ModelConfig.from_json(good["bert_config"])
    bert = build_model(bert_config, VOCAB)
    good["bert"] = folder / "bert.bin"
    save_state_dict(bert.state_dict(), good["bert"])
    good["hf_bert"] = folder / "hf_bert"
    save_hf_bert(bert.state_dict(), bert_config, good["hf_bert"])
    for name, save_hf in (("t5", save_hf_t5), ("bart", save_hf_bart)):
        config = ModelConfig.from_json(good[f"{name}_config"])
        model = build_model(config, VOCAB)
        good[name] = folder / f"{name}.bin"
        save_state_dict(model.state_dict(), good[name])
        good[f"hf_{name}"] = folder / f"hf_{name}"
        save_hf(model.state_dict(), config, good[f"hf_{name}"])
    apply_lora(llama, rank=2, alpha=4, target_modules=("self_attn.linear_layers.*",))
    good["adapter"] = folder / "lora.bin"
    save_adapter(llama, good["adapter"])
    good["peft_adapter"] = folder / "peft_adapter"
    write_peft_adapter(lora_state_dict(llama), lora_config_of(llama), ModelConfig.from_json(good["config"]),
                       good["peft_adapter"])
    good["dataset"] = make_dataset(folder, spm, lines=100, seq_length=16)
    pretrain(train_argv(good["dataset"], spm, good["config"], folder / "run" / "m", steps=1, save=1, batch=2))
    good["state"] = folder / "run" / "m" / "1"
    good["corpus"] = text_file(folder, "corpus.txt", ("\n".join(generated_lines(200)) + "\n").encode())
    records = [{"instruction": line, "input": "", "output": line[::-1]} for line in generated_lines(20, seed=3)]
    good["alpaca"] = text_file(folder, "alpaca.json", json.dumps(records, ensure_ascii=False, indent=1).encode())
    good["special_tokens"] = text_file(folder, "tokens.json", b'{"pad": "<unk>"}')
    good["prompts"] = text_file(folder, "prompts.txt", "the model\n数据 模型\n".encode())
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    good["bert_vocab"] = text_file(folder, "vocab.txt", ("\n".join(words) + "\n").encode())
    good["cloze"] = text_file(folder, "cloze.txt", b"w1 [MASK] w3\n")
    good["choice"] = text_file(folder, "computer_network_val.csv", "id,question,A,B,C,D,answer\n"
                               "0,数据 模型,the,model,reads,tokens,B\n1,训练 语言,data,loss,batch,epoch,D\n".encode())
    if importlib.util.find_spec("gguf") is not None:
        from tencentpretrain.convert.gguf import read_checkpoint, write_gguf
        from tencentpretrain.convert.gguf_vocab import read_vocabulary

        config, tensors = read_checkpoint(good["checkpoint"], good["config"])
        good["gguf"] = folder / "model.gguf"
        write_gguf(good["gguf"], config, tensors, read_vocabulary(spm, VOCAB), "f32", None, "tiny")
    good["log"] = text_file(folder, "log.jsonl", b"".join(
        json.dumps({"split": "train", "step": s, "loss": 5.0 / s}).encode() + b"\n" for s in range(1, 5)))
    return good


# ------------------------------------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    id: str
    command: Command
    argv: list[str]
    out_dir: Path
    broken: Path | None  # the file the message must name; None: the all-good run
    flag: str | None  # the flag given the broken file, which the message must name too


def variants(command: Command) -> list[tuple[str, str | None, Callable | None]]:
    """(case id, the flag given a broken file or None, its builder or None) of every case of one row."""
    out = [] if command.serves else [(f"{command.name}-good", None, None)]
    return out + [(f"{command.name}-{flag.lstrip('-')}-{name}", flag, build)
                  for flag, (kind, _) in command.inputs.items() for name, build in BROKEN[kind].items()]


def make_cases(good: dict[str, Path], root: Path) -> list[Case]:
    """Every row once with good inputs (unless it serves), then once per input flag and broken file."""
    cases = []
    for command in filter(lambda c: c.available, COMMANDS):
        for case_id, broken_flag, build in variants(command):
            folder = root / case_id
            (folder / "out").mkdir(parents=True)
            given = broken = build(good[command.inputs[broken_flag][1]], folder) if build else None
            if isinstance(broken, tuple):
                given, broken = broken
            argv = []
            for flag, (_, artefact) in command.inputs.items():
                argv += [flag, str(given if flag == broken_flag else good[artefact])]
            for flag, name in command.outputs.items():
                argv += [flag, str(folder / "out" / name)]
            cases.append(Case(case_id, command, argv + list(command.extra), folder / "out", broken, broken_flag))
    return cases


@pytest.fixture(scope="module")
def table(tmp_path_factory, tiny_spm):
    """(cases, results) of the whole table, run in one driver process."""
    root = tmp_path_factory.mktemp("bad_input")
    (root / "good").mkdir()
    good = build_good(root / "good", tiny_spm)
    cases = make_cases(good, root / "cases")
    (root / "cases.json").write_text(json.dumps([
        {"id": c.id, "script": str(ROOT / c.command.script), "argv": c.argv} for c in cases]))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(root / "cases.json"),
                           str(root / "results.json")], cwd=ROOT, env=driver_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {c.id: c for c in cases}, json.loads((root / "results.json").read_text())


def driver_env() -> dict[str, str]:
    env = subprocess_env()
    env.pop("TP_DEBUG", None)
    env["TQDM_DISABLE"] = "1"
    return env


CASE_IDS = [case_id for command in COMMANDS for case_id, _, _ in variants(command)]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_command_against_broken_file(table, case_id):
    cases, results = table
    if case_id not in cases:
        pytest.skip("needs an optional package that is not installed")
    case, result = cases[case_id], results[case_id]
    output = result["output"]
    assert "Traceback" not in output, output
    if case.broken is None:
        assert result["status"] == 0, output
        return
    assert result["status"] not in (0, "timeout"), output
    assert str(case.broken) in output and f"{case.flag} " in output, output
    assert not any(case.out_dir.iterdir()), f"left behind: {sorted(p.name for p in case.out_dir.iterdir())}"


def test_table_covers_every_script_the_readme_shows():
    """A command the README shows (``python X.py`` or ``deepspeed X.py``) without a row fails here."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    shown = {word for text in (readme, docs) for word in text.split() if word.endswith(".py")
             and (ROOT / word).is_file() and not word.startswith(("bench/", "tests/"))}
    covered = {c.script for c in COMMANDS}
    assert shown - covered - {"scripts/make_sample_data.py"} == set()


ENTRY_POINTS = ["preprocess_lm-spm_model_path-random_bytes_model", "pretrain-pretrained_model_path-truncated_bin",
                "convert_llama_tp_to_hf-input_model_path-truncated_bin", "run_llama-test_path-not_utf8",
                "server-load_model_path-garbled_safetensors"]


@pytest.mark.parametrize("case_id", ENTRY_POINTS)
def test_entry_points_in_their_own_process(table, case_id):
    """The same outcome as ``python script.py ...`` started by a user (the driver is faithful)."""
    cases, results = table
    case = cases[case_id]
    proc = subprocess.run([sys.executable, str(ROOT / case.command.script), *case.argv], cwd=ROOT,
                          env=driver_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == results[case_id]["status"] == 1, output
    assert "Traceback" not in output and str(case.broken) in output and "error:" in output


def test_debug_shows_the_traceback(table):
    """``TP_DEBUG=1`` and ``--debug`` add the traceback to the message, for bug reports."""
    cases, _ = table
    case = cases["convert_llama_tp_to_hf-input_model_path-zero_byte_bin"]
    script = str(ROOT / case.command.script)
    for env, flag in (({**driver_env(), "TP_DEBUG": "1"}, []), (driver_env(), ["--debug"])):
        proc = subprocess.run([sys.executable, script, *case.argv, *flag], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr and "CheckpointError" in proc.stderr
        assert f"error: --input_model_path {case.broken}: empty file" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_launched_ranks_end_cleanly(table, launcher):
    """Under torchrun or deepspeed (ZeRO-3) a bad --pretrained_model_path, read by rank 0 only, ends the run with the
    message on rank 0's stderr; the launcher then adds its own failure report, which is not ours to change."""
    program = shutil.which(launcher, path=subprocess_env()["PATH"])
    if program is None:
        pytest.skip(f"{launcher} not installed")
    cases, _ = table
    case = cases["pretrain-pretrained_model_path-truncated_bin"]
    if launcher == "torchrun":
        command = [program, "--standalone", "--nproc_per_node", "2", str(ROOT / "pretrain.py"), *case.argv]
    else:
        command = [program, "--master_port", str(free_port()), "--num_gpus", "2", str(ROOT / "pretrain.py"),
                   *case.argv, "--deepspeed", "--enable_zero3", "--deepspeed_config",
                   str(ROOT / "models" / "deepspeed_zero3_config.json")]
    proc = subprocess.run(command, cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"pretrain.py: error: --pretrained_model_path {case.broken}: truncated" in output, output
    ours = [f'File "{ROOT / part}' for part in ("tencentpretrain", "pretrain.py")]  # not .venv: the launcher's own
    assert not any(frame in output for frame in ours), output  # no traceback through our code on any rank
    assert not any(case.out_dir.iterdir())
