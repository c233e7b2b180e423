"""A tiny T5 and a tiny BART pretrained end to end on the sample: a SentencePiece model with each family's special
tokens, preprocess.py --data_processor t5|bart, pretrain.py, exact resume, and run_seq2seq.py on the result."""

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from train_support import load_script

from tencentpretrain.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus.txt"
# T5's layout (pad, eos, unk; no bos; the sentinels are appended by the t5 tokenizer) and BART's (<s>, <pad>, </s>,
# <unk>, then <mask>, named by a special-tokens file).
FAMILIES = {
    "t5": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1},
    "bart": {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "user_defined_symbols": ["<mask>"]},
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, folder) with the tokenizer and the dataset of one family built from the first 1,200 sample lines."""
    name, folder = request.param, tmp_path_factory.mktemp(request.param)
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:1200]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "sp"), vocab_size=120,
                                   model_type="unigram", minloglevel=2, **FAMILIES[name])
    extra = []
    if name == "bart":  # documents of 8 lines, a blank line between them; the mask token named
        (folder / "corpus.txt").write_text("".join(line + "\n" + ("\n" if i % 8 == 7 else "")
                                                   for i, line in enumerate(lines)), encoding="utf-8")
        (folder / "special.json").write_text(json.dumps({"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>",
                                                         "mask": "<mask>"}), encoding="utf-8")
        extra = ["--special_tokens_path", str(folder / "special.json")]
    else:
        (folder / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_script("preprocess").main(["--corpus_path", str(folder / "corpus.txt"), "--spm_model_path",
                                    str(folder / "sp.model"), "--dataset_path", str(folder / "dataset"),
                                    "--data_processor", name, "--seq_length", "48", *extra])
    return name, folder


def pretrain(name: str, folder: Path, out: Path, *extra: str) -> dict[int, dict]:
    """Train 120 steps (states every 20) into ``out`` (``out / step``, ``out.bin``); the train records."""
    config = ROOT / "models" / name / "tiny_config.json"
    argv = ["--dataset_path", str(folder / "dataset"), "--spm_model_path", str(folder / "sp.model"),
            "--config_path", str(config), "--output_model_path", str(out), "--data_processor", name,
            "--total_steps", "120", "--save_checkpoint_steps", "20", "--report_steps", "1", "--batch_size", "8",
            "--learning_rate", "3e-3", "--warmup", "0.05", "--peak_flops", "1e12", "--seed", "3", *extra]
    assert run_cli(load_script("pretrain").main, argv) == 0
    records = [json.loads(line) for line in Path(f"{out}-log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if r["split"] == "train"}


def test_pretrains_resumes_exactly_and_generates(family, tmp_path):
    """The loss falls by at least 20% from the untrained model's (T5's span targets 5.39 -> 4.05, BART's copy of
    the source much further, in 120 steps of 8 samples); a run resumed from its step-100 state (dropout on;
    the noise drawn in the loader by (seed, epoch, sample)) logs the same losses and ends with the same weights; the
    model decodes through run_seq2seq.py."""
    name, folder = family
    whole, resumed = tmp_path / "whole" / "m", tmp_path / "resumed" / "m"
    first = pretrain(name, folder, whole)
    curve = [first[step]["loss"] for step in sorted(first)]
    assert sum(curve[-10:]) / 10 < 0.8 * curve[0], curve[::10]
    again = pretrain(name, folder, resumed, "--resume_from_checkpoint", str(whole / "100"))
    assert sorted(again) == list(range(101, 121))
    assert all(again[step]["loss"] == first[step]["loss"] for step in again)
    a = torch.load(whole.with_name("m.bin"), weights_only=True)
    b = torch.load(resumed.with_name("m.bin"), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    sources = tmp_path / "sources.txt"
    sources.write_text("the red fox sees a blue bird.\none plus two\n", encoding="utf-8")
    argv = ["--load_model_path", str(whole.with_name("m.bin")), "--config_path",
            str(ROOT / "models" / name / "tiny_config.json"), "--spm_model_path", str(folder / "sp.model"),
            "--test_path", str(sources), "--prediction_path", str(tmp_path / "out.txt"), "--seq_length", "48",
            "--tgt_seq_length", "8"] + (["--decoder_start_token_id", "2"] if name == "bart" else [])
    assert run_cli(load_script("run_seq2seq", "inference").main, argv) == 0
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 2
