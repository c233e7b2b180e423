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
from conftest import confident_model

from tencentpretrain.generation import Engine
from tencentpretrain.generation.chat import chat_prompt, encode_prompt, fit_prompt
from tencentpretrain.generation.text import generate_text
from tencentpretrain.tokenizers import SentencePieceTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from server_thread import ServerThread  # noqa: E402

from tencentpretrain.serving.app import Service, create_app  # noqa: E402

TINY = {"mask": "causal", "layernorm_positioning": "pre", "target": ["lm"],
        "emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "local_kv_heads_num": 2,
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
def model(tokenizer):
    """A tiny LLaMA with large random weights (confident logits: greedy choices are not near-ties)."""
    return confident_model(TINY, tokenizer.vocab_size)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    return Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)


def running(service: Service):
    """The service's app served on a free loopback port; close() it after use."""
    return ServerThread(create_app(service)).start()


@pytest.fixture(scope="module")
def server(engine, tokenizer):
    """A running server on a free loopback port (greedy by default), stopped after the tests."""
    httpd = running(Service(engine, tokenizer, model_name="tiny", template="alpaca", seq_length=128,
                            max_tokens=16, max_batch_size=8, prefill_chunk=8))
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


def test_eight_concurrent_requests_get_what_they_get_alone(server, engine, tokenizer):
    """Different prompt lengths, max_tokens, stop strings, sampling and seeds, streamed or not, all at once."""
    words = "the model reads tokens and learns 数据 模型 训练 from data".split()
    jobs = []
    for i in range(8):
        text = " ".join(words[(i + k) % len(words)] for k in range(3 + 9 * i))
        settings = {"max_tokens": 6 + 7 * i, "temperature": 0.9 if i % 3 == 1 else 0, "seed": 100 + i,
                    "stop": ["数据"] if i % 4 == 2 else [], "stream": i % 2 == 1}
        jobs.append((text, settings))

    def expected(text: str, settings: dict) -> str:
        from tencentpretrain.generation import SamplingParams

        sampling = SamplingParams(temperature=settings["temperature"])
        ids = fit_prompt(encode_prompt(tokenizer, text), 128 - settings["max_tokens"])  # as the server cuts it
        (done,) = generate_text(engine, tokenizer, [ids], settings["max_tokens"], sampling, settings["stop"],
                                settings["seed"])
        return done.text

    def ask(job) -> str:
        text, settings = job
        body = {"prompt": text, **settings}
        with httpx.Client(base_url=server.url, timeout=120) as client:
            if not settings["stream"]:
                return client.post("/v1/completions", json=body).json()["choices"][0]["text"]
            with client.stream("POST", "/v1/completions", json=body) as response:
                events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])

    wanted = [expected(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(ask, jobs))
    assert got == wanted
    assert len({len(w) for w in wanted}) > 4  # different lengths really ran side by side
    steps, rows = metric(server, "tp_decode_steps_total"), metric(server, "tp_decoded_rows_total")
    assert rows > steps  # several rows per step on average: they were batched


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
              or line.startswith(name + "{")]
    return sum(values)


@pytest.fixture()
def one_row_server(model, tokenizer):
    """A server with a single row and no eos: a request ends only at max_tokens or when cancelled."""
    endless = Engine(model, eos_ids=[], pad_id=tokenizer.pad_id)
    httpd = running(Service(endless, tokenizer, model_name="tiny", template="alpaca", seq_length=8192,
                            max_tokens=16, max_batch_size=1))
    yield httpd
    httpd.close()


def test_a_disconnected_stream_frees_its_slot(one_row_server):
    with httpx.Client(base_url=one_row_server.url, timeout=60) as client:
        body = {"prompt": "the model reads", "max_tokens": 2000, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
        # the stream is closed after 3 events: the only row must be free for the next request, which would
        # otherwise wait for the 2000 tokens
        answer = client.post("/v1/completions", json={"prompt": "数据 模型", "max_tokens": 5}).json()
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 5
    assert metric(one_row_server, 'tp_finished_total{reason="cancelled"}') == 1
    assert metric(one_row_server, "tp_completion_tokens_total") < 2000  # the first one really was cut short
    assert metric(one_row_server, "tp_running") == 0
    # a client that gives up waiting for a non-streaming answer frees its row too
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=one_row_server.url, timeout=1.5) as client:
        client.post("/v1/completions", json={"prompt": "the data", "max_tokens": 8000})
    with httpx.Client(base_url=one_row_server.url, timeout=60) as client:
        answer = client.post("/v1/completions", json={"prompt": "数据 模型", "max_tokens": 5}).json()
    assert answer["usage"]["completion_tokens"] == 5
    assert metric(one_row_server, 'tp_finished_total{reason="cancelled"}') == 2
    assert metric(one_row_server, "tp_completion_tokens_total") < 2000 + 8000


MALFORMED = [
    ("/v1/completions", b'{"prompt": '),
    ("/v1/completions", b'[1, 2]'),
    ("/v1/completions", b'{"prompt": 5}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -3}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 10000}'),
    ("/v1/completions", b'{"prompt": "x", "top_p": 1.5}'),
    ("/v1/completions", b'{"prompt": "x", "seed": "abc"}'),
    ("/v1/completions", b'{"prompt": []}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "assistant", "content": "x"}]}'),
    ("/v1/chat/completions", b'{"messages": "hello"}'),
    ("/chat", b'{"question": null}'),
    ("/chat", "\xff\xfe".encode("latin-1")),
    ("/chat", b''),
    ("/chat", b'{"question": "' + b"x" * (17 << 20) + b'"}'),  # over the 16 MiB limit: 413
]


def test_200_requests_from_16_threads_valid_and_malformed(server):
    def valid(i: int) -> tuple[str, dict]:
        kinds = [("/v1/completions", {"prompt": f"the model {i}", "max_tokens": 1 + i % 4}),
                 ("/v1/completions", {"prompt": ["数据", "the data"], "max_tokens": 2, "stream": True}),
                 ("/v1/chat/completions", {"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 3}),
                 ("/chat", {"question": f"question {i}", "max_tokens": 2})]
        return kinds[i % len(kinds)]

    def one(i: int) -> tuple[bool, int, str]:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            if i % 2:
                path, raw = MALFORMED[(i // 2) % len(MALFORMED)]
                response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
                return False, response.status_code, response.text
            path, body = valid(i // 2)
            response = client.post(path, json=body)
            ok = response.status_code == 200 and ("[DONE]" in response.text if body.get("stream") else
                                                   ("choices" in response.json() or "answer" in response.json()))
            return True, response.status_code if ok else -response.status_code, response.text

    prompts_before = metric(server, "tp_requests_total")
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(200)))
    assert [r for r in results if r[0] and r[1] != 200] == []
    refused = [r for r in results if not r[0]]
    assert len(refused) == 100 and all(status in (400, 413) and '"invalid_request_error"' in text
                                       for _, status, text in refused)
    valid_prompts = sum(2 if "stream" in valid(i // 2)[1] else 1 for i in range(0, 200, 2))
    assert metric(server, "tp_requests_total") - prompts_before == valid_prompts  # no malformed one reached it
    assert httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"
    status, data = post(server, "/chat", {"question": "still alive"})
    assert status == 200 and isinstance(data["answer"], str)


def test_schema_health_and_metrics_are_served(server):
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/chat", "/health", "/metrics"} <= set(
        schema["paths"])
    completion = schema["components"]["schemas"]["CompletionRequest"]
    assert "prompt" in completion["required"] and {"max_tokens", "stream", "truncate", "seed"} <= set(
        completion["properties"])
    assert httpx.get(f"{server.url}/docs", timeout=30).status_code == 200
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["running"] == 0
    before = metric(server, "tp_completion_tokens_total")
    post(server, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert 1 <= metric(server, "tp_completion_tokens_total") - before <= 3
    assert metric(server, "tp_max_batch_size") == 8


def test_over_long_prompts_are_cut_and_reported_or_refused(server, tokenizer):
    text = " ".join(["the model reads tokens"] * 60)
    length = len(encode_prompt(tokenizer, text))
    assert length > 128
    status, data = post(server, "/v1/completions", {"prompt": text, "max_tokens": 16})
    assert status == 200 and data["usage"]["prompt_tokens"] == 112
    assert data["usage"]["prompt_tokens_truncated"] == length - 112 and data["usage"]["truncation_side"] == "left"
    status, data = post(server, "/v1/completions", {"prompt": text, "max_tokens": 16, "truncate": False})
    assert status == 400 and data["error"]["param"] == "prompt" and f"{length} tokens" in data["error"]["message"]
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "and then"}]
    status, data = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 16})
    assert status == 200 and data["usage"]["prompt_tokens_truncated"] > 0
    status, data = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 16, "truncate": False})
    assert status == 400 and data["error"]["param"] == "messages"
    status, data = post(server, "/v1/completions", {"prompt": "short", "max_tokens": 4, "truncate": False})
    assert status == 200 and data["usage"]["prompt_tokens_truncated"] == 0 and "truncation_side" not in data["usage"]


def test_validation_errors_name_the_field(server):
    status, data = post(server, "/v1/chat/completions", {"messages": [{"role": "bot", "content": 3}]})
    assert status == 400 and data["error"]["param"] == "messages"
    assert "messages[0].role" in data["error"]["message"] and "messages[0].content" in data["error"]["message"]
    status, data = post(server, "/v1/completions", {"prompt": "x", "max_tokens": True})
    assert status == 400 and data["error"]["param"] == "max_tokens"


@pytest.fixture()
def fuzz_server(engine, tokenizer):
    httpd = running(Service(engine, tokenizer, model_name="tiny", template="alpaca", seq_length=40,
                            max_tokens=4, max_batch_size=4))
    yield httpd
    httpd.close()


def fuzz(operation, mode, url: str, failures: list) -> None:
    """Send ``operation``'s generated requests (a bounded, derandomised run); note every 5xx in ``failures``."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=12, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=url, timeout=60)
        if response.status_code >= 500:
            failures.append((operation.label, case.body, response.status_code, response.text[:200]))

    check()


def test_fuzzed_requests_never_get_a_server_error(fuzz_server):
    """schemathesis generates requests, valid and not, from the served schema: none may get a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    failures, labels = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        fuzz(operation, schemathesis.GenerationMode.POSITIVE, fuzz_server.url, failures)
        if operation.method.upper() == "POST":  # a GET without parameters has no invalid form
            fuzz(operation, schemathesis.GenerationMode.NEGATIVE, fuzz_server.url, failures)
    assert "POST /v1/chat/completions" in labels and len(labels) >= 6
    assert failures == []
    assert metric(fuzz_server, "tp_requests_total") > 0  # some generated requests were valid ones
    assert httpx.get(f"{fuzz_server.url}/health", timeout=30).json()["status"] == "ok"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    """(config path, checkpoint path) of the tiny model."""
    from tencentpretrain.checkpoint import save_state_dict

    folder = tmp_path_factory.mktemp("tiny_server_model")
    model.config.save(folder / "config.json")
    save_state_dict(model.state_dict(), folder / "model.bin")
    return folder / "config.json", folder / "model.bin"


def test_main_refuses_bad_input_before_listening(checkpoint, tiny_spm, tmp_path, capsys):
    from tencentpretrain.cli import run_cli

    config, _ = checkpoint
    base = ["--spm_model_path", str(tiny_spm), "--config_path", str(config), "--port", "0"]
    assert run_cli(server_module.main, ["--load_model_path", str(tmp_path / "nothing.bin")] + base) == 1
    assert "nothing.bin" in capsys.readouterr().err
    assert run_cli(server_module.main, ["--load_model_path", str(tmp_path), "--max_batch_size", "0"] + base) == 1
    assert "--max_batch_size must be >= 1" in capsys.readouterr().err


def test_main_serves_a_checkpoint(checkpoint, tiny_spm):
    """The real command line: load, listen on a free port, answer, stop on SIGTERM."""
    import subprocess

    config, weights = checkpoint
    script = Path(__file__).resolve().parents[1] / "inference" / "server.py"
    command = [sys.executable, str(script), "--load_model_path", str(weights), "--config_path", str(config),
               "--spm_model_path", str(tiny_spm), "--port", "0", "--max_batch_size", "3", "--threads", "2",
               "--temperature", "0", "--model_name", "tiny-cli"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving tiny-cli on http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[3]
        assert httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]["id"] == "tiny-cli"
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": "the model", "max_tokens": 4}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert process.returncode in (0, -15) and "Traceback" not in errors  # uvicorn re-raises SIGTERM once shut down


def test_stream_events_stay_one_line_for_line_splitting_clients():
    """Text with U+2028, U+2029 or U+0085 (tokens can decode to them) must not split an event where httpx's
    iter_lines, like str.splitlines, ends lines; Chinese stays readable."""
    from tencentpretrain.serving.app import event

    data = {"choices": [{"text": "中文\u2028a\x85b\u2029c\n\r\x1c"}]}
    lines = event(data).splitlines()
    assert lines[1:] == [""] and json.loads(lines[0].removeprefix("data: ")) == data
    assert "中文" in lines[0]
