"""Conversations: chat templates rendered as transformers renders them, the loss mask taken from the rendering,
``preprocess.py --data_processor chat`` end to end (both record forms, cutting at turn boundaries, bad records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece
from test_data_preprocess import failing, preprocess

from tencentpretrain.data import BinaryDataset
from tencentpretrain.data.chat import conversation_ids, conversation_segments, messages_of
from tencentpretrain.data.chat_template import ChatTemplate, TemplateError, exported_source, load_template
from tencentpretrain.registry import TEMPLATES
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tokenizers"
BOS, EOS = 1, 2

# Templates of the families our users start from, written as their tokenizer_config.json files carry them.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "train the model"},
    {"role": "assistant", "content": "data and 模型 训练"},
    {"role": "user", "content": "中文 文本 loss"},
    {"role": "assistant", "content": "the loss of the model"},
]


def transformers_render(source: str, messages, add_generation_prompt: bool = False) -> str:
    """``apply_chat_template(tokenize=False)`` of transformers itself, on a throwaway tokenizer."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, "<unk>")),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = source
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def sources() -> list[tuple[str, str]]:
    found = [(name, TEMPLATES.get(name).chat()) for name in TEMPLATES.names()]
    found += [("chatml", CHATML), ("llama2", LLAMA2), ("llama3", LLAMA3)]
    for family in ("llama3", "qwen3"):
        config = SHARED / family / "tokenizer_config.json"
        if config.is_file():
            found.append((f"shared-{family}", load_template(str(config)).source))
    return found


@pytest.mark.parametrize("name,source", sources(), ids=[name for name, _ in sources()])
@pytest.mark.parametrize("generation", [False, True])
def test_rendering_equals_transformers_apply_chat_template(tmp_path, name, source, generation):
    path = tmp_path / "template.jinja"
    path.write_text(source, encoding="utf-8")
    ours = load_template(str(path))
    for upto in (2, 4, 5):  # ending with a user message (a prompt) and with an answer
        messages = CONVERSATION[:upto]
        want = transformers_render(source, messages, generation)
        assert ours.render(messages, generation, bos_token="<s>", eos_token="</s>") == want


def test_registered_templates_render_todays_prompt_bytes():
    """Pinned bytes: alpaca's prompts as the alpaca processor and chat_prompt always wrote them."""
    template = load_template("alpaca")
    text = template.render(CONVERSATION, bos_token="<s>", eos_token="</s>")
    head = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n")
    assert text == (f"<s>{head}You answer briefly.\n\ntrain the model\n\n### Response:\ndata and 模型 训练</s>"
                    f"<s>{head}中文 文本 loss\n\n### Response:\nthe loss of the model</s>")
    assert load_template("none").render(CONVERSATION[1:3], bos_token="<s>", eos_token="</s>") == \
        "<s>train the modeldata and 模型 训练</s>"
    for name in TEMPLATES.names():
        prompt = load_template(name).render([{"role": "user", "content": "q"}], bos_token="<s>")
        assert prompt == "<s>" + TEMPLATES.get(name).render("q")


@pytest.mark.parametrize("source", [CHATML, LLAMA2, LLAMA3, "alpaca"])
def test_loss_segments_are_the_answers_and_their_end_text(tmp_path, source):
    if source != "alpaca":
        (tmp_path / "t.jinja").write_text(source, encoding="utf-8")
        source = str(tmp_path / "t.jinja")
    template = load_template(source)
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    segments = conversation_segments(template, CONVERSATION, specials)
    assert "".join(s.text for s in segments) == template.render(CONVERSATION, **specials)
    answers = [s.text for s in segments if s.loss]
    ends = {"alpaca": "</s>", CHATML: "<|im_end|>\n", LLAMA2: " </s>", LLAMA3: "<|eot_id|>"}
    end = ends.get(Path(source).read_text(encoding="utf-8") if source != "alpaca" else "alpaca")
    lead = " " if "[INST]" in template.source else ""
    assert answers == [lead + CONVERSATION[2]["content"] + end, lead + CONVERSATION[4]["content"] + end]


@pytest.mark.skipif(not (SHARED / "qwen3").is_dir(), reason="needs ../shared")
def test_qwen3_template_that_rewrites_earlier_turns_is_masked_from_the_whole_rendering():
    template = load_template(str(SHARED / "qwen3" / "tokenizer_config.json"))
    specials = {"bos_token": "", "eos_token": "<|im_end|>"}
    segments = conversation_segments(template, CONVERSATION, specials)
    assert "".join(s.text for s in segments) == transformers_render(template.source, CONVERSATION)
    assert [s.text for s in segments if s.loss] == [CONVERSATION[2]["content"] + "<|im_end|>\n",
                                                     CONVERSATION[4]["content"] + "<|im_end|>\n"]


def test_conversation_ids_of_the_registered_template_are_prompt_answer_eos(tiny_spm):
    tokenizer = SentencePieceTokenizer(tiny_spm)
    ids, loss, ends = conversation_ids(tokenizer, load_template("alpaca"), CONVERSATION)
    sp = tokenizer.sp
    render = TEMPLATES.get("alpaca").render
    want = ([BOS] + sp.encode(render("You answer briefly.\n\ntrain the model")) + sp.encode("data and 模型 训练")
            + [EOS] + [BOS] + sp.encode(render("中文 文本 loss")) + sp.encode("the loss of the model") + [EOS])
    assert ids == want
    assert [i for i, flag in zip(ids, loss) if flag] == (sp.encode("data and 模型 训练") + [EOS]
                                                          + sp.encode("the loss of the model") + [EOS])
    assert ends[-1] == len(ids)


def sharegpt(turns: list[tuple[str, str]], system: str | None = None) -> dict:
    record = {"conversations": [m for q, a in turns for m in ({"from": "human", "value": q},
                                                              {"from": "gpt", "value": a})]}
    if system:
        record["system"] = system
    return record


def openai(turns: list[tuple[str, str]], system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in turns:
        messages += [{"role": "user", "content": [{"type": "text", "text": q}]}, {"role": "assistant", "content": a}]
    return {"messages": messages}


TURNS = [("train the model", "data and 模型 训练"), ("中文 文本 loss", "the loss of the model"),
         ("model data", "训练 the data")]


def targets_with_loss(ds: BinaryDataset, i: int) -> list[int]:
    tokens, mask = ds[i]
    return tokens[1:][mask].tolist()


@pytest.mark.parametrize("form,suffix", [(sharegpt, ".json"), (openai, ".jsonl")])
def test_preprocess_chat_masks_every_assistant_turn_and_its_eos(tmp_path, tiny_spm, form, suffix):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_spm))
    records = [form(TURNS, system="You answer briefly."), form(TURNS[:1])]
    corpus = tmp_path / f"chat{suffix}"
    corpus.write_text(json.dumps(records, ensure_ascii=False) if suffix == ".json" else
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length", "512")
    ds = BinaryDataset(tmp_path / "ds")
    assert len(ds) == 2
    assert targets_with_loss(ds, 0) == [t for _, a in TURNS for t in sp.encode(a) + [EOS]]
    assert targets_with_loss(ds, 1) == sp.encode(TURNS[0][1]) + [EOS]
    tokenizer = SentencePieceTokenizer(tiny_spm)
    system = [{"role": "system", "content": "You answer briefly."}]
    messages = system + [m for q, a in TURNS for m in ({"role": "user", "content": q},
                                                        {"role": "assistant", "content": a})]
    assert ds[0][0][:ds.length(0)].tolist() == conversation_ids(tokenizer, load_template("alpaca"), messages)[0]


def test_loss_on_last_counts_only_the_last_kept_turn(tmp_path, tiny_spm):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_spm))
    corpus = tmp_path / "chat.json"
    corpus.write_text(json.dumps([sharegpt(TURNS)], ensure_ascii=False), encoding="utf-8")
    preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length", "512",
               "--loss_on", "last")
    assert targets_with_loss(BinaryDataset(tmp_path / "ds"), 0) == sp.encode(TURNS[-1][1]) + [EOS]


def test_long_conversations_are_cut_at_turn_boundaries_and_counted(tmp_path, tiny_spm):
    tokenizer = SentencePieceTokenizer(tiny_spm)
    messages = [m for q, a in TURNS for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    _, _, ends = conversation_ids(tokenizer, load_template("alpaca"), messages)
    seq_length = ends[1] + 3 - 1  # room for two turns (seq_length + 1 tokens), not three
    corpus = tmp_path / "chat.json"
    corpus.write_text(json.dumps([sharegpt(TURNS), sharegpt([("q " * 2000, "a")]), sharegpt(TURNS[:1])],
                                 ensure_ascii=False), encoding="utf-8")
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length",
                        str(seq_length))
    ds = BinaryDataset(tmp_path / "ds")
    assert [ds.length(i) for i in range(len(ds))] == [ends[1], ends[0]]
    assert ds[0][0][ends[1] - 1] == EOS  # the second turn kept whole, its eos included
    counts = json.loads((tmp_path / "ds" / "meta.json").read_text())["counts"]
    assert (counts["dropped_turns"], counts["too_long"], counts["truncated"]) == (2, 1, 1)
    assert report["counts"]["dropped_turns"] == 2


@pytest.mark.parametrize("record,message", [
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown from 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "two user turns in a row"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}, "empty content"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "must follow a user turn"),
    ({"text": "x"}, "expected a 'conversations' (ShareGPT) or 'messages' (OpenAI) key"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "content part 0"),
])
def test_bad_record_names_file_and_line_or_is_skipped_and_counted(tmp_path, tiny_spm, capsys, record, message):
    corpus = tmp_path / "chat.jsonl"
    corpus.write_text(json.dumps(sharegpt(TURNS[:1])) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    err = failing(capsys, corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length", "256")
    assert f"{corpus}:2" in err and message in err
    assert not (tmp_path / "ds").exists()
    preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length", "256",
               "--skip_invalid")
    counts = json.loads((tmp_path / "ds" / "meta.json").read_text())["counts"]
    assert (counts["samples"], counts["skipped"]) == (1, 1)


def test_messages_of_both_forms_agree():
    assert messages_of(sharegpt(TURNS, "sys")) == messages_of(openai(TURNS, "sys"))


def test_template_files_and_their_errors(tmp_path, tiny_spm, capsys):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": CHATML}), encoding="utf-8")
    assert load_template(str(config)).source == CHATML
    assert load_template(str(tmp_path)).source == CHATML  # a Hugging Face directory
    named = tmp_path / "named" / "tokenizer_config.json"
    named.parent.mkdir()
    named.write_text(json.dumps({"chat_template": [{"name": "default", "template": LLAMA3},
                                                   {"name": "tool_use", "template": CHATML}]}), encoding="utf-8")
    assert load_template(str(named)).source == LLAMA3
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=f"{bad}.*line 2"):
        load_template(str(bad))
    with pytest.raises(TemplateError, match="neither a name"):
        load_template("chatml_missing")
    empty = tmp_path / "empty" / "tokenizer_config.json"
    empty.parent.mkdir()
    empty.write_text("{}", encoding="utf-8")
    with pytest.raises(TemplateError, match="no chat_template"):
        load_template(str(empty))
    corpus = tmp_path / "chat.json"
    corpus.write_text(json.dumps([sharegpt(TURNS[:1])]), encoding="utf-8")
    err = failing(capsys, corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--template", str(bad))
    assert str(bad) in err and "line 2" in err and not (tmp_path / "ds").exists()


def test_sandbox_refuses_unsafe_templates(tmp_path):
    path = tmp_path / "evil.jinja"
    path.write_text("{{ messages.__class__.__mro__ }}", encoding="utf-8")
    with pytest.raises(TemplateError):
        load_template(str(path)).render([{"role": "user", "content": "x"}])


def test_exported_source_writes_the_space_whole_string_tokenizers_need(tiny_spm):
    """llama.cpp and apply_chat_template tokenize the rendering whole; the registered templates then write the
    space SentencePiece puts before a text that ours tokenizes apart, so the ids agree."""
    tokenizer = SentencePieceTokenizer(tiny_spm)
    text = ChatTemplate(exported_source("alpaca", True)).render(
        CONVERSATION[1:3], bos_token="<s>", eos_token="</s>")
    ids = []
    for part in text.replace("</s>", "\x00</s>\x00").replace("<s>", "\x00<s>\x00").split("\x00"):
        ids += [BOS] if part == "<s>" else [EOS] if part == "</s>" else tokenizer.sp.encode(part) if part else []
    assert ids == conversation_ids(tokenizer, load_template("alpaca"), CONVERSATION[1:3])[0]



def test_exported_source_of_a_file_is_the_file(tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(CHATML, encoding="utf-8")
    assert exported_source(str(path), True) == CHATML


def test_pretrain_tunes_on_a_chat_dataset(tmp_path, tiny_spm):
    """pretrain.py takes the chat dataset (its loss mask) as it takes alpaca's, and learns the answers."""
    from train_support import load_script, losses, train_argv, write_config

    corpus = tmp_path / "chat.jsonl"
    corpus.write_text("".join(json.dumps(openai(TURNS[i:i + 1]), ensure_ascii=False) + "\n" for i in range(3)) * 8,
                      encoding="utf-8")
    preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "chat", "--seq_length", "160")
    config = write_config(tmp_path, max_seq_length=160)
    out = tmp_path / "out" / "model"
    load_script("pretrain").main(train_argv(tmp_path / "ds", tiny_spm, config, out, "--data_processor", "chat",
                                            steps=40, save=40, batch=4))
    curve = losses(out.with_name("model-log.jsonl"))
    assert sorted(curve) == list(range(1, 41))
    assert sum(curve[s] for s in range(31, 41)) / 10 < curve[1] - 1.0


def test_run_llama_reports_a_bad_template_file_before_loading_the_model(tmp_path, tiny_spm, capsys):
    from train_support import load_script

    from tencentpretrain.cli import run_cli

    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ messages[0]['content'] \n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n", encoding="utf-8")
    run_llama = load_script("run_llama", "inference")
    argv = ["--load_model_path", str(tmp_path / "missing.bin"), "--config_path", str(tmp_path / "missing.json"),
            "--spm_model_path", str(tiny_spm), "--test_path", str(prompts), "--prediction_path",
            str(tmp_path / "out.txt"), "--template", str(bad)]
    assert run_cli(run_llama.main, argv) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "line 1" in err and "missing.bin" not in err
    assert not (tmp_path / "out.txt").exists()
