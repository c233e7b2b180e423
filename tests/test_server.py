"""The HTTP server over loopback: the official openai client (streaming and not), plain HTTP, bad requests,
continuous batching seen from clients, disconnects, load with malformed bodies, the schema, the command line."""

from __future__ import annotations

import http.client
import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tencentpretrain.config import ModelConfig
from tencentpretrain.generation import Engine
from tencentpretrain.generation.chat import chat_prompt, encode_prompt, generate_text
from tencentpretrain.model import build_model
from tencentpretrain.tokenizers import SentencePieceTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tencentpretrain.generation.api import Service, ServerThread, create_app  # noqa: E402

TINY = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "local_kv_heads_num": 2,
        "layers_num": 2, "dropout": 0.0, "max_seq_length": 256, "embedding": ["word"],
        "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
        "feed_forward": "gated", "layernorm": "rms", "hidden_act": "silu"}


def load_server_module():
    """Import inference/server.py (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "inference" / "server.py"
    spec = importlib.util.spec_from_file_location("inference_server", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


server_module = load_server_module()


@pytest.fixture(scope="module")
def tokenizer(tiny_spm):
    return SentencePieceTokenizer(tiny_spm)


@pytest.fixture(scope="module")
def engine(tokenizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(TINY), tokenizer.vocab_size).eval()
    return Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)


def running(service: Service):
    """The service's app served on a free loopback port; close() it after use."""
    return ServerThread(create_app(service)).start()


@pytest.fixture(scope="module")
def server(engine, tokenizer):
    """A running server on a free loopback port (greedy by default), stopped after the tests."""
    httpd = running(Service(engine, tokenizer, model_name="tiny", template="alpaca", seq_length=128,
                            max_new_tokens=16, max_batch_size=8, prefill_chunk=8))
    yield httpd
    httpd.close()


@pytest.fixture()
def client(server):
    from openai import OpenAI

    host, port = server.server_address
    return OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0, timeout=60)


def post(server, path: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=60)
    payload = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def expected_chat(engine, tokenizer, question: str, history=(), max_tokens: int = 16) -> str:
    ids = chat_prompt(tokenizer, "alpaca", list(history), question, 128 - max_tokens)
    return generate_text(engine, tokenizer, [ids], max_tokens)[0].text


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completions_with_the_openai_client(client, engine, tokenizer):
    result = client.completions.create(model="tiny", prompt="the model reads", max_tokens=10, temperature=0)
    (expected,) = generate_text(engine, tokenizer, [encode_prompt(tokenizer, "the model reads")], 10)
    assert result.choices[0].text == expected.text
    assert result.choices[0].finish_reason == expected.finish_reason
    assert result.usage.completion_tokens == expected.completion_tokens
    stream = client.completions.create(model="tiny", prompt="the model reads", max_tokens=10, temperature=0,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    assert len(chunks) > 2  # the text really arrived in pieces


def test_batched_completions(client, engine, tokenizer):
    prompts = ["the model", "数据 模型 训练 and a longer prompt here"]
    result = client.completions.create(model="tiny", prompt=prompts, max_tokens=8, temperature=0)
    expected = generate_text(engine, tokenizer, [encode_prompt(tokenizer, p) for p in prompts], 8)
    assert [c.text for c in sorted(result.choices, key=lambda c: c.index)] == [e.text for e in expected]


def test_chat_completions_with_the_openai_client(client, engine, tokenizer):
    messages = [{"role": "user", "content": "what is a model"}, {"role": "assistant", "content": "a thing"},
                {"role": "user", "content": "and data"}]
    expected = expected_chat(engine, tokenizer, "and data", [("what is a model", "a thing")])
    result = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_simple_chat_endpoint(server, engine, tokenizer):
    status, data = post(server, "/chat", {"question": "what is a model"})
    assert status == 200 and data == {"answer": expected_chat(engine, tokenizer, "what is a model")}


def test_concurrent_requests_get_their_own_answers(server, engine, tokenizer):
    questions = [f"question {i} about the model" for i in range(6)]
    expected = [expected_chat(engine, tokenizer, q) for q in questions]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda q: post(server, "/chat", {"question": q}), questions))
    assert answers == [(200, {"answer": e}) for e in expected]


@pytest.mark.parametrize("path, body, message", [
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 500}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n=1"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, "role"),
    ("/chat", {"question": ""}, "question"),
    ("/chat", [1, 2], "object"),
])
def test_bad_requests_get_400(server, path, body, message):
    status, data = post(server, path, body)
    assert status == 400
    assert message in data["error"]["message"]


def test_broken_json_and_unknown_routes(server):
    status, data = post(server, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and "invalid JSON" in data["error"]["message"]
    status, _ = post(server, "/v2/nothing", {})
    assert status == 404
    status, data = post(server, "/chat", {"question": "still alive"})  # the server survived all of it
    assert status == 200 and isinstance(data["answer"], str)


def test_openai_client_sees_errors(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="n=1"):
        client.completions.create(model="tiny", prompt="x", n=3)
