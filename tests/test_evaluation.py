"""scripts/evaluate.py: multiple choice and perplexity against independent computations with transformers on the
exported model; rolling windows; malformed files stop with the file and line."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from evaluation_support import DATA, ROOT, script_main, tiny_model

from tencentpretrain.cli import run_cli
from tencentpretrain.evaluation import EvaluationInputError, read_choice_file, read_documents, rolling_windows
from tencentpretrain.evaluation.choice import ChoiceScorer
from tencentpretrain.hardware import cpu
from tencentpretrain.tokenizers import SentencePieceTokenizer

SHARED = Path(os.environ.get("TP_SHARED_DIR", ROOT.parent / "shared")) / "data"
LETTERS = "ABCD"
evaluate = script_main("evaluate")


@pytest.fixture(scope="module")
def choice_spm(tmp_path_factory) -> Path:
    """A SentencePiece model trained on the test CSVs, so that letters and the cues are pieces."""
    from tencentpretrain.tokenizers.train import train_sentencepiece

    folder = tmp_path_factory.mktemp("choice_spm")
    lines = []
    for path in sorted(DATA.rglob("*.csv")):
        for row in csv.reader(path.open(encoding="utf-8")):
            lines.append(" ".join(row) + " 答案：A 答案：B 答案：C 答案：D Answer: A Answer: B Answer: C Answer: D")
    (folder / "corpus.txt").write_text("\n".join(lines * 3) + "\n", encoding="utf-8")
    return train_sentencepiece(folder / "corpus.txt", folder / "spm", vocab_size=500)


@pytest.fixture(scope="module")
def model(tmp_path_factory, choice_spm):
    return tiny_model(tmp_path_factory.mktemp("choice_model"), choice_spm, seed=1)


@pytest.fixture(scope="module")
def hf(model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.hf_dir, dtype=torch.float32).eval()


# ----- an independent multiple-choice computation: csv module, f-strings, sentencepiece, transformers -----

def csv_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows[0][:2] == ["id", "question"]:
        return [dict(zip(rows[0], row)) for row in rows[1:]]
    return [{"id": str(i), "question": r[0], "A": r[1], "B": r[2], "C": r[3], "D": r[4], "answer": r[5]}
            for i, r in enumerate(rows)]


def expected_prompt(row: dict, shots: list[dict], subject: str, language: str) -> str:
    if language == "zh":
        head, cue, sep = f"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n答案：", ""
    else:
        head, cue, sep = f"The following are multiple choice questions (with answers) about {subject}.\n\n", \
            "\nAnswer:", " "

    def block(r):
        return f"{r['question']}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}{cue}"
    return head + "".join(f"{block(s)}{sep}{s['answer']}\n\n" for s in shots) + block(row)


def expected_answers(hf, spm: Path, test: Path, dev: Path | None, shots: int, subject: str, language: str,
                     letter_pieces: list[str]) -> dict[str, str]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    letter_ids = [sp.piece_to_id(piece) for piece in letter_pieces]
    assert sp.unk_id() not in letter_ids
    examples = csv_rows(dev)[:shots] if shots else []
    answers = {}
    for row in csv_rows(test):
        ids = torch.tensor([[sp.bos_id(), *sp.encode(expected_prompt(row, examples, subject, language))]])
        with torch.no_grad():
            logits = hf(ids).logits[0, -1]
        answers[row["id"]] = LETTERS[int(torch.argmax(logits[letter_ids]))]
    return answers


def run_choice(model, tmp_path, *flags) -> dict:
    out = tmp_path / "choice.json"
    assert evaluate(["--task", "choice", *model.model_flags(), "--output_path", str(out), *flags]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def check_against_transformers(result: dict, expected: dict[str, dict[str, str]], answers: dict[str, dict]):
    for subject, predictions in expected.items():
        got = result["subjects"][subject]
        assert got["predictions"] == predictions
        correct = sum(predictions[qid] == answers[subject][qid] for qid in predictions)
        assert got["correct"] == correct and got["accuracy"] == pytest.approx(correct / len(predictions))
    accuracies = [result["subjects"][s]["accuracy"] for s in expected]
    assert result["average"]["macro_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    all_predictions = [p for subject in expected.values() for p in subject.values()]
    assert len(set(all_predictions)) > 1  # a model that always answers the same letter would prove little


def test_ceval_predictions_match_transformers(model, hf, tmp_path):
    result = run_choice(model, tmp_path, "--test_path", str(DATA / "ceval" / "val"), "--dev_path",
                        str(DATA / "ceval" / "dev"), "--shots", "2", "--batch_size", "3", "--subject_mapping",
                        str(DATA / "ceval" / "subject_mapping.json"), "--submission_path", str(tmp_path / "sub.json"))
    names = {"computer_network": "计算机网络", "logic": "逻辑学"}
    expected = {s: expected_answers(hf, model.spm, DATA / "ceval" / "val" / f"{s}_val.csv",
                                    DATA / "ceval" / "dev" / f"{s}_dev.csv", 2, name, "zh", list(LETTERS))
                for s, name in names.items()}
    answers = {s: {r["id"]: r["answer"] for r in csv_rows(DATA / "ceval" / "val" / f"{s}_val.csv")} for s in names}
    check_against_transformers(result, expected, answers)
    assert [result["subjects"][s]["prefix_shared"] for s in names] == [5, 4]  # header and examples computed once
    assert set(result["categories"]) == {"STEM", "Humanities"}
    assert json.loads((tmp_path / "sub.json").read_text(encoding="utf-8")) == expected


def test_mmlu_english_predictions_match_transformers(model, hf, tmp_path):
    result = run_choice(model, tmp_path, "--test_path", str(DATA / "mmlu" / "test" / "astronomy_test.csv"),
                        "--dev_path", str(DATA / "mmlu" / "dev"), "--shots", "3", "--prompt_language", "en")
    expected = {"astronomy": expected_answers(hf, model.spm, DATA / "mmlu" / "test" / "astronomy_test.csv",
                                              DATA / "mmlu" / "dev" / "astronomy_dev.csv", 3, "astronomy", "en",
                                              [f"▁{letter}" for letter in LETTERS])}
    answers = {"astronomy": {r["id"]: r["answer"] for r in csv_rows(DATA / "mmlu" / "test" / "astronomy_test.csv")}}
    check_against_transformers(result, expected, answers)


def test_standalone_letter_tokens_are_c_evals_official_choice(model, hf, tmp_path):
    result = run_choice(model, tmp_path, "--test_path", str(DATA / "ceval" / "val" / "logic_val.csv"),
                        "--choice_token", "standalone")
    expected = expected_answers(hf, model.spm, DATA / "ceval" / "val" / "logic_val.csv", None, 0, "logic", "zh",
                                [f"▁{letter}" for letter in LETTERS])
    assert result["subjects"]["logic"]["predictions"] == expected


def test_test_split_without_answers_gives_predictions_only(model, tmp_path):
    test = tmp_path / "logic_test.csv"
    rows = csv_rows(DATA / "ceval" / "val" / "logic_val.csv")
    with test.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "A", "B", "C", "D"])
        writer.writerows([[r["id"], r["question"], r["A"], r["B"], r["C"], r["D"]] for r in rows])
    result = run_choice(model, tmp_path, "--test_path", str(test))
    logic = result["subjects"]["logic"]
    assert len(logic["predictions"]) == 4 and logic["accuracy"] is None and result["average"]["questions"] == 0


def test_examples_are_dropped_to_fit_seq_length(model, tmp_path):
    result = run_choice(model, tmp_path, "--test_path", str(DATA / "ceval" / "val" / "computer_network_val.csv"),
                        "--dev_path", str(DATA / "ceval" / "dev"), "--shots", "3", "--seq_length", "160")
    subject = result["subjects"]["computer_network"]
    assert 0 < subject["shots_reduced"] and subject["truncated"] == 0
    assert subject["prefix_shared"] == 5 - subject["shots_reduced"]


def test_shared_prefix_gives_the_logits_of_whole_prompts(model):
    from tencentpretrain.evaluation.scoring import next_token_logits, next_token_logits_after_prefix
    from tencentpretrain.generation import load_generation_model

    ours = load_generation_model(model.checkpoint, model.config)
    prefix = [1, 20, 21, 22, 23, 24, 25]
    suffixes = [[30], [31, 32, 33], [34, 35], [36, 37, 38, 39, 40, 41]]  # one token, several, padded in a batch
    candidates = [[5, 6, 7, 8]] * len(suffixes)
    whole = next_token_logits(ours, [prefix + s for s in suffixes], candidates, batch_size=1, pad_id=0)
    after = next_token_logits_after_prefix(ours, prefix, suffixes, candidates, batch_size=3, pad_id=0)
    assert torch.allclose(torch.tensor(after), torch.tensor(whole), atol=1e-4)


@pytest.mark.skipif(not (SHARED / "tokenizers" / "llama_tokenizer.model").exists(), reason="../shared is absent")
def test_letter_ids_under_the_llama_tokenizer():
    """Documented in docs/evaluation.md: A after 答案： is the bare piece, after Answer: the ▁ piece."""
    tokenizer = SentencePieceTokenizer(SHARED / "tokenizers" / "llama_tokenizer.model")
    question = read_choice_file(DATA / "ceval" / "val" / "logic_val.csv")[0]
    letter_ids = {(language, token): ChoiceScorer(tokenizer, language, token, 2048).prepare(question, [], "x")[1]
                  for language in ("zh", "en") for token in ("continuation", "standalone")}
    assert letter_ids[("zh", "continuation")] == [29909, 29933, 29907, 29928]
    assert letter_ids[("en", "continuation")] == [319, 350, 315, 360]
    assert letter_ids[("zh", "standalone")] == letter_ids[("en", "standalone")] == [319, 350, 315, 360]


# ----- perplexity -----

def test_rolling_windows_by_hand():
    windows = rolling_windows([5, 6, 7, 8, 9], prefix_id=1, seq_length=2)
    assert [(w.inputs, w.targets) for w in windows] == [([1, 5], [5, 6]), ([6, 7], [7, 8]), ([7, 8], [9])]
    assert [(w.inputs, w.targets) for w in rolling_windows([5, 6], 1, 8)] == [([1, 5], [5, 6])]
    assert rolling_windows([], 1, 4) == []


def test_perplexity_matches_transformers_in_one_window(model, hf, tmp_path):
    """Documents shorter than the window: one transformers forward each over bos + tokens gives every figure."""
    import sentencepiece

    docs = ["数据 模型 Answer: A", "Which planet is closest to the Sun?\tVenus", "以太网的最小帧长是 64 字节"]
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")  # blank lines are not documents
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model.spm))
    nll = 0.0
    for doc in docs:
        ids = torch.tensor([[sp.bos_id(), *sp.encode(doc)]])
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        nll -= float(logprobs.gather(1, ids[0, 1:, None]).sum())
    out = tmp_path / "ppl.json"
    assert evaluate(["--task", "perplexity", *model.model_flags(), "--corpus_path", str(corpus), "--batch_size", "2",
                     "--output_path", str(out)]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    chars, size = sum(map(len, docs)), sum(len(d.encode()) for d in docs)
    words = sum(len(d.split()) for d in docs)
    tokens = sum(len(sp.encode(d)) for d in docs)
    assert (got["documents"], got["characters"], got["bytes"], got["words"], got["tokens"]) == (3, chars, size, words,
                                                                                                  tokens)
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["bits_per_character"] == pytest.approx(nll / chars / math.log(2), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / size / math.log(2), rel=1e-5)
    assert got["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-5)
    assert got["token_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_long_documents_match_transformers_window_by_window(model, hf, tmp_path):
    """Documents several windows long: transformers run on each rolling window (written out here from the
    definition, not with ``rolling_windows``) gives the NLL; a longer window, with more context, gives another."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model.spm))
    docs = [" ".join(["以太网的最小帧长是 64 字节 Which planet is closest to the Sun?"] * 6),
            " ".join(["数据 模型 Answer: A"] * 9)]  # a text corpus's lines are stripped: no trailing space
    corpus = tmp_path / "long.txt"
    corpus.write_text("\n".join(docs) + "\n", encoding="utf-8")
    window, nll = 16, 0.0
    for doc in docs:
        tokens = sp.encode(doc)
        sequence = [sp.bos_id(), *tokens]
        assert len(tokens) > 3 * window
        for start in range(0, len(tokens), window):
            end = min(start + window, len(tokens))  # predicts tokens[start:end], i.e. sequence[start + 1:end + 1]
            first = max(0, end - window)  # the inputs: the `window` tokens of `sequence` before tokens[end - 1]
            ids = torch.tensor([sequence[first:end + 1]])
            with torch.no_grad():
                logprobs = torch.log_softmax(hf(ids[:, :-1]).logits[0].double(), -1)
            scored = logprobs.gather(1, ids[0, 1:, None])[:, 0]  # log p(sequence[i + 1] | sequence[first:i + 1])
            nll -= float(scored[start - first:].sum())
    results = {}
    for seq_length in (window, 4 * window):
        out = tmp_path / f"long{seq_length}.json"
        assert evaluate(["--task", "perplexity", *model.model_flags(), "--corpus_path", str(corpus),
                         "--seq_length", str(seq_length), "--batch_size", "3", "--output_path", str(out)]) == 0
        results[seq_length] = json.loads(out.read_text(encoding="utf-8"))
    assert results[window]["nll"] == pytest.approx(nll, rel=1e-5)
    assert results[window]["bits_per_character"] == pytest.approx(nll / sum(map(len, docs)) / math.log(2), rel=1e-5)
    assert results[4 * window]["nll"] != pytest.approx(nll, rel=1e-4)


def test_perplexity_does_not_depend_on_the_batch_or_the_format(model, tmp_path):
    """Batch 1 and 4 of our checkpoint, and the Hugging Face export loaded alone (its tokenizer.model used)."""
    corpus = tmp_path / "docs.jsonl"
    texts = ["the model reads tokens " * n for n in (1, 7, 30)] + ["数据 模型 训练 " * 12]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    results = []
    for batch, flags in (("1", model.model_flags()), ("4", model.model_flags()),
                         ("3", ["--load_model_path", str(model.hf_dir), "--device", "cpu"])):
        out = tmp_path / f"b{len(results)}.json"
        assert evaluate(["--task", "perplexity", *flags, "--corpus_path", str(corpus), "--seq_length", "16",
                         "--batch_size", batch, "--output_path", str(out)]) == 0
        results.append(json.loads(out.read_text(encoding="utf-8")))
    assert results[0]["nll"] == pytest.approx(results[1]["nll"], rel=1e-6)
    assert results[0]["nll"] == pytest.approx(results[2]["nll"], rel=1e-5)
    assert results[0]["tokens"] > 3 * 16


# ----- malformed input: file and line -----

BAD_CSVS = {
    "wrong header": ("id,question,A,B,C,D,answr\n0,q,a,b,c,d,A\n", "x_val.csv:1: wrong header"),
    "column count": ("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,A\n", "x_val.csv:3: 6 columns, expected 7"),
    "answer": ("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n\n1,q,a,b,c,d,E\n", "x_val.csv:4: answer 'E' is not one"),
    "headerless columns": ("q,a,b,c,d\n", "x_val.csv:1: 5 columns, expected 6"),
    "quoted newline": ('id,question,A,B,C,D,answer\n0,"two\nlines",a,b,c,d,A\n1,q,a,b,c,d,F\n',
                       "x_val.csv:4: answer 'F'"),
    "empty": ("", "x_val.csv: empty file"),
    "header only": ("id,question,A,B,C,D,answer\n", "x_val.csv: a header and no question"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_malformed_csv_names_file_and_line(tmp_path, case):
    text, message = BAD_CSVS[case]
    (tmp_path / "x_val.csv").write_text(text, encoding="utf-8")
    with pytest.raises(EvaluationInputError, match=message.replace("(", r"\(")):
        read_choice_file(tmp_path / "x_val.csv")


def test_non_utf8_files_name_the_line(tmp_path):
    (tmp_path / "x_val.csv").write_bytes(b"id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,\xff,a,b,c,d,A\n")
    with pytest.raises(EvaluationInputError, match="x_val.csv:3: invalid UTF-8"):
        read_choice_file(tmp_path / "x_val.csv")
    (tmp_path / "docs.txt").write_bytes(b"fine\n\xe4\xb8 broken\n")
    with pytest.raises(EvaluationInputError, match="docs.txt:2: invalid UTF-8"):
        read_documents(tmp_path / "docs.txt")


@pytest.mark.parametrize("line, message", [('{"text": "ok"', "malformed JSON"), ('{"txt": "a"}', "missing key 'text'"),
                                           ('{"text": 3}', "key 'text' must be a string")])
def test_bad_jsonl_line(tmp_path, line, message):
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(EvaluationInputError, match=f"docs.jsonl:2: {message}"):
        read_documents(tmp_path / "docs.jsonl")


def test_blank_corpus_is_an_error(tmp_path):
    (tmp_path / "docs.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(EvaluationInputError, match="docs.txt: no document"):
        read_documents(tmp_path / "docs.txt")


def test_command_reports_bad_input_without_traceback_or_output(model, tmp_path, capsys):
    bad = tmp_path / "cn_val.csv"
    bad.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,X\n", encoding="utf-8")
    out = tmp_path / "out.json"
    status = run_cli(evaluate, ["--task", "choice", *model.model_flags(), "--test_path", str(bad), "--output_path",
                                str(out)], prog="evaluate.py")
    err = capsys.readouterr().err
    assert status == 1 and f"{bad}:2: answer 'X'" in err and "Traceback" not in err
    assert not out.exists()
    status = run_cli(evaluate, ["--task", "choice", "--load_model_path", str(tmp_path / "absent.bin"), "--test_path",
                                str(bad)], prog="evaluate.py")  # files are read before the model is loaded
    assert status == 1 and f"{bad}:2: answer 'X'" in capsys.readouterr().err
    status = run_cli(evaluate, ["--task", "choice", *model.model_flags(), "--test_path", str(DATA / "ceval" / "val"),
                                "--dev_path", str(DATA / "mmlu" / "dev"), "--shots", "1"], prog="evaluate.py")
    assert status == 1 and "no dev file for subject 'computer_network'" in capsys.readouterr().err
    status = run_cli(evaluate, ["--task", "perplexity", *model.model_flags(), "--corpus_path", str(bad),
                                "--seq_length", "100000"], prog="evaluate.py")
    assert status == 1 and "--seq_length 100000 exceeds the model's max_seq_length 1024" in capsys.readouterr().err


def test_corpus_formats(tmp_path):
    (tmp_path / "a.txt").write_text("  first doc \n\n\tsecond\n", encoding="utf-8")
    assert read_documents(tmp_path / "a.txt") == ["first doc", "second"]  # stripped lines, blank ones skipped
    (tmp_path / "a.jsonl").write_text('{"text": " kept as is\\n"}\n{"text": ""}\n', encoding="utf-8")
    assert read_documents(tmp_path / "a.jsonl") == [" kept as is\n"]
    (tmp_path / "a.json").write_text('[{"text": "one"},\n {"text": "two"}]', encoding="utf-8")
    assert read_documents(tmp_path / "a.json") == ["one", "two"]
    (tmp_path / "b.json").write_text('[{"text": "one"},\n {"text": 2}]', encoding="utf-8")
    with pytest.raises(EvaluationInputError, match="b.json:2: key 'text' must be a string"):
        read_documents(tmp_path / "b.json")


@pytest.mark.skipif(not cpu().bf16, reason=f"no bf16 hardware on {cpu().kind()}: bf16 is emulated")
def test_perplexity_in_bf16_follows_fp32(model, tmp_path):
    """``--dtype bfloat16`` on the CPU: the NLL within the documented bf16 tolerance of fp32 (docs/machines.md)."""
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the model reads tokens and words\n" * 20, encoding="utf-8")
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        assert evaluate(["--task", "perplexity", *model.model_flags(), "--corpus_path", str(corpus), "--seq_length",
                         "32", "--batch_size", "2", "--dtype", dtype, "--output_path", str(out)]) == 0
        results[dtype] = json.loads(out.read_text(encoding="utf-8"))
    assert results["bfloat16"]["tokens"] == results["float32"]["tokens"]
    assert results["bfloat16"]["nll"] == pytest.approx(results["float32"]["nll"], rel=0.005)
    assert results["bfloat16"]["nll"] != results["float32"]["nll"]  # it did run in bf16
