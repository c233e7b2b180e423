"""The OpenAI-compatible HTTP API over a continuous-batching ``Batcher`` (FastAPI; the ``.[serve]`` extra).

Endpoints: ``GET /v1/models``; ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``"stream": true``
sends server-sent events); ``POST /chat {"question"}`` -> ``{"answer"}``; ``GET /health``; ``GET /metrics``
(Prometheus text); the OpenAPI schema at ``/openapi.json`` (and ``/docs``). Request bodies are validated by the
pydantic models below: a malformed one gets HTTP 400 in OpenAI's error format, naming the field (``param``).

Every prompt of every request is one ``TextRequest`` in the batcher; the batcher's thread hands text pieces to the
event loop with ``call_soon_threadsafe``. A client that disconnects cancels its requests, which frees their rows at
the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from tencentpretrain.data.chat_template import load_template
from tencentpretrain.generation.chat import chat_prompt, encode_prompt, fit_prompt, split_messages
from tencentpretrain.generation.finish import prompt_budget
from tencentpretrain.generation.sampling import SamplingParams
from tencentpretrain.generation.scheduler import SEED_MAX, SEED_MIN, Batcher, TextRequest
from tencentpretrain.generation.text import Completion

MAX_BODY = 16 << 20  # bytes of a request body
DISCONNECT_POLL_S = 1.0  # how often a waiting non-streaming request checks that its client is still there

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # a JSON integer is accepted too
Text = Annotated[str, Strict()]


class Settings(BaseModel):
    """Generation settings shared by every endpoint; absent ones take the server's defaults."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logprobs...)

    model: str | None = None
    max_tokens: Int | None = Field(None, ge=1, description="most new tokens (default: the server's)")
    max_completion_tokens: Int | None = Field(None, ge=1, description="the newer name of max_tokens")
    temperature: Float | None = Field(None, ge=0, description="0: greedy")
    top_k: Int | None = Field(None, ge=0, description="sample among the k most likely tokens (0: all)")
    top_p: Float | None = Field(None, gt=0, le=1)
    repetition_penalty: Float | None = Field(None, gt=0, description="CTRL repetition penalty (1: off)")
    n: Int = Field(1, description="completions per prompt; only 1 is supported")
    stop: Text | list[Text] | None = Field(None, description="strings that end the text")
    seed: Int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="seed of this request's random generator")
    truncate: bool = Field(True, description="cut an over-long prompt from the left (reported in usage); "
                                             "false: refuse it with HTTP 400")

    @field_validator("n")
    @classmethod
    def _only_one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n


class StreamOptions(BaseModel):
    include_usage: bool = False


class Streaming(Settings):
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(Streaming):
    prompt: Text | Annotated[list[Text], Field(min_length=1)] = Field(description="a prompt or a list of prompts")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatCompletionRequest(Streaming):
    messages: list[Message] = Field(min_length=1, description="system*, then user/assistant turns, ending with user")


class SimpleChatRequest(Settings):
    question: Text = Field(min_length=1)


class RequestError(Exception):
    """A request the server refuses with HTTP 400 (or ``status``), naming the field in ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


class Service:
    """The model behind the API: tokenizer, template, limits, defaults and the batcher.

    Args:
        engine: the token engine.
        tokenizer: its tokenizer.
        model_name: the id ``/v1/models`` reports.
        template: the chat template (a registered name, a template file or a ``ChatTemplate``).
        seq_length: context size: prompt plus new tokens.
        max_tokens: the default of a request's ``max_tokens``.
        sampling: default sampling settings.
        stop: stop strings added to every request's.
        max_batch_size: requests decoded together.
        prefill_chunk: prompt tokens read per step.
    """

    def __init__(self, engine, tokenizer, model_name: str = "tencentpretrain", template: str = "alpaca",
                 seq_length: int = 2048, max_tokens: int = 256, sampling: SamplingParams = SamplingParams(),
                 stop: tuple[str, ...] = (), max_batch_size: int = 8, prefill_chunk: int = 64):
        self.tokenizer, self.model_name, self.template = tokenizer, model_name, load_template(template)
        self.seq_length, self.max_tokens, self.sampling, self.stop = seq_length, max_tokens, sampling, stop
        self.batcher = Batcher(engine, max_batch_size, seq_length, prefill_chunk)
        self.started = time.time()

    def settings(self, body: Settings) -> tuple[int, SamplingParams, tuple[str, ...]]:
        """(max_tokens, sampling, stop strings) of a request, defaults filled in."""
        max_tokens = body.max_completion_tokens or body.max_tokens or self.max_tokens
        if not 1 <= max_tokens < self.seq_length:
            raise RequestError(f"max_tokens must be in [1, {self.seq_length - 1}], got {max_tokens}", "max_tokens")
        given = {key: getattr(body, key) for key in ("temperature", "top_k", "top_p", "repetition_penalty")}
        try:
            sampling = replace(self.sampling, **{key: value for key, value in given.items() if value is not None})
        except ValueError as err:
            raise RequestError(str(err)) from None
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        return max_tokens, sampling, (*self.stop, *stop)

    def fit(self, ids: list[int], full_length: int, budget: int, truncate: bool, param: str) -> tuple[list, int]:
        """(``ids``, tokens cut) checked against ``budget``; refused when cut and ``truncate`` is off."""
        if full_length > budget and not truncate:
            raise RequestError(f"the prompt has {full_length} tokens but only {budget} fit (seq_length "
                               f"{self.seq_length} minus max_tokens); shorten it, lower max_tokens or leave "
                               "'truncate' on", param)
        return ids, full_length - len(ids)

    def completion_prompts(self, body: CompletionRequest, budget: int) -> list[tuple[list[int], int]]:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        out = []
        for text in texts:
            ids = encode_prompt(self.tokenizer, text)
            out.append(self.fit(fit_prompt(ids, budget), len(ids), budget, body.truncate, "prompt"))
        return out

    def chat_prompt(self, messages: list[Message], budget: int, truncate: bool) -> tuple[list[int], int]:
        try:
            system, history, question = split_messages([m.model_dump() for m in messages])
        except ValueError as err:
            raise RequestError(str(err), "messages") from None
        full = chat_prompt(self.tokenizer, self.template, history, question, 1 << 62, system)
        ids = chat_prompt(self.tokenizer, self.template, history, question, budget, system)
        return self.fit(ids, len(full), budget, truncate, "messages")

    def start(self, prompts: list[list[int]], max_tokens: int, sampling: SamplingParams, stop, seed,
              events: asyncio.Queue) -> list[TextRequest]:
        """Submit one batcher request per prompt; their events arrive on ``events`` as ``(index, event)``."""
        loop = asyncio.get_running_loop()
        requests = []
        for index, prompt in enumerate(prompts):
            def push(event, index=index):
                loop.call_soon_threadsafe(events.put_nowait, (index, event))
            request = TextRequest(prompt, max_tokens, sampling, seed, self.tokenizer, stop, push)
            requests.append(self.batcher.submit(request))
        return requests

    def metrics_text(self) -> str:
        """The counters in Prometheus' text format."""
        m, b = self.batcher.metrics, self.batcher
        lines = [
            ("tp_requests_total", "counter", "prompts submitted", m.requests),
            ("tp_prompt_tokens_total", "counter", "prompt tokens prefilled", m.prompt_tokens),
            ("tp_completion_tokens_total", "counter", "tokens generated", m.completion_tokens),
            ("tp_decode_steps_total", "counter", "batched decoding steps", m.steps),
            ("tp_decoded_rows_total", "counter", "rows over all decoding steps", m.rows_decoded),
            ("tp_mixed_steps_total", "counter", "decoding steps that also read prompt chunks", m.mixed_steps),
            ("tp_forward_passes_total", "counter", "forward passes of the model", m.passes),
            ("tp_queue_length", "gauge", "prompts waiting for a row", b.queue_length()),
            ("tp_running", "gauge", "prompts in the running batch", b.running()),
            ("tp_max_batch_size", "gauge", "rows of the batch", b.max_batch_size),
            ("tp_batch_occupancy", "gauge", "mean rows per decoding step", m.rows_decoded / max(m.steps, 1)),
        ]
        out = []
        for name, kind, help_text, value in lines:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        out += ["# HELP tp_finished_total prompts ended, by reason", "# TYPE tp_finished_total counter"]
        out += [f'tp_finished_total{{reason="{reason}"}} {count}' for reason, count in sorted(m.finished.items())]
        return "\n".join(out) + "\n"


def usage(completions: list[Completion], truncated: list[int]) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.completion_tokens for c in completions)
    out = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
           "prompt_tokens_truncated": sum(truncated)}
    if sum(truncated):
        out["truncation_side"] = "left"
    return out


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One message naming each bad field (``messages[0].role: ...``), and the first field's name."""
    parts, param = [], None
    for error in errors:
        loc = [p for p in error["loc"][1:] if isinstance(p, int) or ("[" not in p and p not in ("str", "int"))]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if error["type"] == "json_invalid":
            parts.append(f"invalid JSON body: {error.get('ctx', {}).get('error', error['msg'])}")
        elif not path:
            parts.append(f"the JSON body must be an object: {error['msg']}")
        else:
            parts.append(f"{path}: {error['msg'].removeprefix('Value error, ')}")
            param = param or str(loc[0])
    return "; ".join(dict.fromkeys(parts)), param


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service``; the batcher runs while the app does (its lifespan)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.batcher.start()
        yield
        service.batcher.close()

    app = FastAPI(title="TencentPretrain inference server", version="1.0", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0])

    app.add_middleware(BodyLimit)
    add_error_handlers(app)
    add_status_routes(app, service)
    add_completion_routes(app, service)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Bad requests answered as OpenAI's API answers them (``error_body``)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(err.errors()))
        return JSONResponse(error_body(message, 400, param), status_code=400)

    @app.exception_handler(RequestError)
    async def refused(_request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(err), err.status, err.param), status_code=err.status)


def add_status_routes(app: FastAPI, service: Service) -> None:
    """``/v1/models``, ``/health`` and ``/metrics``."""

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": 0,
                                            "owned_by": "tencentpretrain"}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        thread = service.batcher.thread
        alive = thread is not None and thread.is_alive()
        body = {"status": "ok" if alive else "stopped", "running": service.batcher.running(),
                "waiting": service.batcher.queue_length(), "uptime_s": round(time.time() - service.started, 1)}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")


def add_completion_routes(app: FastAPI, service: Service) -> None:
    """``/v1/completions``, ``/v1/chat/completions`` (both streamed on request) and ``/chat``."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        max_tokens, sampling, stop = service.settings(body)
        fitted = service.completion_prompts(body, prompt_budget(service.seq_length, max_tokens))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": service.model_name}
        job = Job(service, request, [ids for ids, _ in fitted], [cut for _, cut in fitted], max_tokens, sampling,
                  stop, body.seed)
        if body.stream:
            def chunk(index, text, reason):
                return {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]}
            return EventStream(job, job.stream(chunk, head, include_usage(body)))
        done = await job.wait()
        choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                   for i, c in enumerate(done)]
        return {**head, "choices": choices, "usage": usage(done, job.truncated)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        max_tokens, sampling, stop = service.settings(body)
        ids, cut = service.chat_prompt(body.messages, prompt_budget(service.seq_length, max_tokens), body.truncate)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": service.model_name}
        job = Job(service, request, [ids], [cut], max_tokens, sampling, stop, body.seed)
        if body.stream:
            head = {**head, "object": "chat.completion.chunk"}

            def chunk(index, text, reason):
                delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
                return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": reason}]}
            return EventStream(job, job.stream(chunk, head, include_usage(body), first=chunk(0, None, None)))
        (done,) = await job.wait()
        message = {"role": "assistant", "content": done.text}
        return {**head, "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason}],
                "usage": usage([done], job.truncated)}

    @app.post("/chat")
    async def simple_chat(body: SimpleChatRequest, request: Request) -> dict:
        max_tokens, sampling, stop = service.settings(body)
        messages = [Message(role="user", content=body.question)]
        ids, cut = service.chat_prompt(messages, prompt_budget(service.seq_length, max_tokens), body.truncate)
        (done,) = await Job(service, request, [ids], [cut], max_tokens, sampling, stop, body.seed).wait()
        return {"answer": done.text}


class BodyLimit:
    """ASGI middleware refusing a request body declared longer than ``MAX_BODY`` with HTTP 413 (a pure ASGI one:
    Starlette's ``BaseHTTPMiddleware`` would hide client disconnects from the endpoints)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_BODY:
                message = f"a request body of at most {MAX_BODY} bytes is required"
                await JSONResponse(error_body(message, 413), 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def include_usage(body: Streaming) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


class Job:
    """The prompts of one HTTP request in the batcher, seen from the event loop."""

    def __init__(self, service: Service, http: Request, prompts: list[list[int]], truncated: list[int],
                 max_tokens: int, sampling: SamplingParams, stop, seed: int | None):
        self.http, self.truncated = http, truncated
        self.events: asyncio.Queue = asyncio.Queue()
        self.requests = service.start(prompts, max_tokens, sampling, stop, seed, self.events)
        self.done: list[Completion | None] = [None] * len(prompts)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def events_until_done(self, poll_disconnect: bool) -> AsyncIterator[tuple[int, str, object]]:
        """``(index, kind, value)`` until every prompt has ended; raises on a generation error."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while any(d is None for d in self.done):
            try:
                item = await asyncio.wait_for(self.events.get(), timeout=DISCONNECT_POLL_S)
            except TimeoutError:
                item = None
            if poll_disconnect and loop.time() - checked >= DISCONNECT_POLL_S:
                checked = loop.time()
                if await self.http.is_disconnected():
                    self.cancel()
                    return
            if item is None:
                continue
            index, (kind, value) = item
            if kind == "error":
                self.cancel()
                raise RequestError(f"generation failed: {value}", status=500)
            if kind == "end":
                self.done[index] = value
            yield index, kind, value

    async def wait(self) -> list[Completion]:
        """The completions (a disconnected client cancels the job)."""
        try:
            async for _ in self.events_until_done(poll_disconnect=True):
                pass
        finally:
            self.cancel()
        if any(d is None for d in self.done):
            raise RequestError("the client went away", status=499)
        return self.done

    async def stream(self, chunk, head: dict, with_usage: bool, first: dict | None = None) -> AsyncIterator[str]:
        """Server-sent events: ``first``, text chunks, each prompt's finish reason, usage if asked, [DONE]."""
        try:
            if first is not None:
                yield event(first)
            try:
                async for index, kind, value in self.events_until_done(poll_disconnect=False):
                    yield event(chunk(index, value, None) if kind == "text" else chunk(index, "", value.finish_reason))
                if with_usage:
                    yield event({**head, "choices": [], "usage": usage(self.done, self.truncated)})
            except RequestError as err:
                yield event(error_body(str(err), err.status))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # the client disconnected (the generator was closed) or all is done


# Characters that str.splitlines (and so httpx's iter_lines) takes for line ends, which JSON leaves unescaped when
# non-ASCII text is kept readable: a sampled token decoding to one of them would split an event in two there.
LINE_BREAKING = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def event(data: dict) -> str:
    """One server-sent event: ``data`` as JSON on one line (non-ASCII text kept readable, except the characters
    some clients split lines at, which are escaped)."""
    text = json.dumps(data, ensure_ascii=False)
    for char, escaped in LINE_BREAKING.items():
        text = text.replace(char, escaped)
    return f"data: {text}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events of a job; the job is cancelled however the response ends (even a client gone before the
    first event, when the body generator never starts)."""

    def __init__(self, job: Job, body: AsyncIterator[str]):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
