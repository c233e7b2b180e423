"""An OpenAI-compatible HTTP server over the generation engine (standard library only).

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``"stream": true`` as server-sent events) and ``POST /chat {"question": ...}`` -> ``{"answer": ...}``.
Requests are served by threads and generate one at a time (a lock around the engine); a malformed request gets
a 400 with a message. Chat messages are rendered through ``--template``, as in training::

    python inference/server.py --load_model_path model.bin --config_path models/llama/7b_config.json \\
        --spm_model_path tokenizer.model --template alpaca --port 8000
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.generation import Engine, SamplingParams  # noqa: E402
from tencentpretrain.generation.chat import chat_prompt, encode_prompt, fit_prompt, split_messages, stream_text
from tencentpretrain.generation.options import add_model_args, load_engine, sampling_from_args  # noqa: E402

MAX_BODY = 16 << 20


class RequestError(ValueError):
    """A bad request: answered with status 400 and this message."""


class Service:
    """Turns OpenAI-style request bodies into generations with one engine, one request at a time.

    Args:
        engine: the generation engine.
        tokenizer: its tokenizer.
        model_name: the id reported by /v1/models and in responses.
        template: prompt template for chat messages.
        seq_length: context size (prompt plus new tokens).
        max_new_tokens: default ``max_tokens``.
        sampling: default sampling settings (a request's fields override them).
        stop: stop strings added to every request's.
    """

    def __init__(self, engine: Engine, tokenizer, model_name: str = "tencentpretrain", template: str = "alpaca",
                 seq_length: int = 2048, max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
                 stop: tuple[str, ...] = ()):
        self.engine, self.tokenizer, self.model_name, self.template = engine, tokenizer, model_name, template
        self.seq_length, self.max_new_tokens, self.sampling, self.stop = seq_length, max_new_tokens, sampling, stop
        self.lock = threading.Lock()

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "tencentpretrain"}]}

    def settings(self, body: dict) -> tuple[int, SamplingParams, tuple[str, ...], int | None]:
        """(max_tokens, sampling, stop strings, seed) of a request, defaults filled in."""
        max_tokens = field(body, "max_tokens", int, self.max_new_tokens)
        max_tokens = field(body, "max_completion_tokens", int, max_tokens)
        if not 1 <= max_tokens < self.seq_length:
            raise RequestError(f"max_tokens must be in [1, {self.seq_length - 1}], got {max_tokens}")
        if field(body, "n", int, 1) != 1:
            raise RequestError("only n=1 is supported")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("'stop' must be a string or a list of strings")
        try:
            sampling = SamplingParams(
                temperature=field(body, "temperature", float, self.sampling.temperature),
                top_k=field(body, "top_k", int, self.sampling.top_k),
                top_p=field(body, "top_p", float, self.sampling.top_p),
                repetition_penalty=field(body, "repetition_penalty", float, self.sampling.repetition_penalty))
        except ValueError as err:
            raise RequestError(str(err)) from None
        return max_tokens, sampling, (*self.stop, *stop), field(body, "seed", int, None)

    def completion_prompts(self, body: dict, budget: int) -> list[list[int]]:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings")
        return [fit_prompt(encode_prompt(self.tokenizer, p), budget) for p in prompts]

    def chat_prompts(self, body: dict, budget: int) -> list[list[int]]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list")
        try:
            system, history, question = split_messages(messages)
        except ValueError as err:
            raise RequestError(str(err)) from None
        return [chat_prompt(self.tokenizer, self.template, history, question, budget, system)]

    def run(self, body: dict, chat: bool) -> tuple[list[list[int]], Iterator]:
        """Validate a request and start it: (prompts, generator of (row, text) pieces returning completions)."""
        max_tokens, sampling, stop, seed = self.settings(body)
        budget = self.seq_length - max_tokens
        prompts = self.chat_prompts(body, budget) if chat else self.completion_prompts(body, budget)
        return prompts, stream_text(self.engine, self.tokenizer, prompts, max_tokens, sampling, stop, seed)


def field(body: dict, key: str, kind: type, default):
    """``body[key]`` checked to be a number of ``kind`` (ints accepted for floats), or ``default`` when absent."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise RequestError(f"'{key}' must be {'a number' if kind is float else 'an integer'}, got {value!r}")
    return kind(value)


def usage(completions) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's ``Service``; every error becomes a JSON answer."""

    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, self.server.service.models())
        else:
            self.send_error_json(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        routes = {"/v1/completions": self.completions, "/v1/chat/completions": self.chat_completions,
                  "/chat": self.simple_chat}
        route = routes.get(self.path.rstrip("/"))
        self.close_connection = True  # one request per connection: an unread body never leaks into the next
        if route is None:
            self.send_error_json(404, f"no route POST {self.path}")
            return
        try:
            body = self.read_json()
            with self.server.service.lock:
                route(body)
        except RequestError as err:
            self.send_error_json(400, str(err))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as err:  # noqa: BLE001 (a failed generation must not take the server down)
            self.send_error_json(500, f"{type(err).__name__}: {err}")

    def read_json(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if not 0 < length <= MAX_BODY:
            raise RequestError(f"a JSON body of 1 to {MAX_BODY} bytes is required")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"invalid JSON body: {err}") from None
        if not isinstance(body, dict):
            raise RequestError("the JSON body must be an object")
        return body

    def completions(self, body: dict) -> None:
        service = self.server.service
        prompts, pieces = service.run(body, chat=False)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": service.model_name}
        if body.get("stream"):
            self.stream(pieces, lambda row, text, reason: {**head, "choices": [
                {"index": row, "text": text, "logprobs": None, "finish_reason": reason}]})
            return
        completions = drain(pieces)
        choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                   for i, c in enumerate(completions)]
        self.send_json(200, {**head, "choices": choices, "usage": usage(completions)})

    def chat_completions(self, body: dict) -> None:
        service = self.server.service
        _, pieces = service.run(body, chat=True)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": service.model_name}
        if body.get("stream"):
            chunk = {**head, "object": "chat.completion.chunk"}
            self.start_events()
            self.event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
            self.stream(pieces, lambda row, text, reason: {**chunk, "choices": [
                {"index": row, "delta": {"content": text} if text else {}, "finish_reason": reason}]}, started=True)
            return
        (completion,) = drain(pieces)
        message = {"role": "assistant", "content": completion.text}
        self.send_json(200, {**head, "choices": [{"index": 0, "message": message,
                                                  "finish_reason": completion.finish_reason}],
                             "usage": usage([completion])})

    def simple_chat(self, body: dict) -> None:
        question = body.get("question")
        if not isinstance(question, str) or not question:
            raise RequestError("'question' must be a non-empty string")
        _, pieces = self.server.service.run({**body, "messages": [{"role": "user", "content": question}]}, chat=True)
        (completion,) = drain(pieces)
        self.send_json(200, {"answer": completion.text})

    def stream(self, pieces: Iterator, chunk, started: bool = False) -> None:
        """Send ``chunk(row, text, finish_reason)`` events as text arrives, the finish reasons, then [DONE]."""
        if not started:
            self.start_events()
        try:
            while True:
                row, text = next(pieces)
                self.event(chunk(row, text, None))
        except StopIteration as done:
            for row, completion in enumerate(done.value):
                self.event(chunk(row, "", completion.finish_reason))
        except Exception as err:  # noqa: BLE001 (headers are sent: report in the stream)
            self.event({"error": {"message": f"{type(err).__name__}: {err}", "type": "server_error"}})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

    def event(self, data: dict) -> None:
        self.wfile.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
        self.wfile.flush()

    def send_json(self, status: int, data: dict) -> None:
        payload = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def send_error_json(self, status: int, message: str) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


def drain(pieces: Iterator):
    """Run a ``stream_text`` generator to its end and return its completions."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A threading HTTP server bound to ``host:port`` (0: a free port; see ``server.server_address``)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.service, server.verbose = service, verbose
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.set_defaults(template="alpaca", seq_length=2048)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    group.add_argument("--model_name", default="tencentpretrain", help="model id reported by the API")
    group.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    sampling = sampling_from_args(parser, args)
    engine, tokenizer = load_engine(args)  # bad files: an InputError, reported by run_cli
    service = Service(engine, tokenizer, args.model_name, args.template, args.seq_length, args.max_new_tokens,
                      sampling, tuple(args.stop))
    server = make_server(service, args.host, args.port, args.verbose)
    print(f"serving {args.model_name} on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(run_cli(main))
