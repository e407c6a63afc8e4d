"""The OpenAI-compatible HTTP API and the chat page, as a FastAPI app around a `Scheduler`.

    GET  /                      the chat page (static/index.html, .css, .js: nothing else served)
    GET  /health                200 {"status": "ok", ...} while the decode loop runs
    GET  /v1/models             the one model: id, validation loss, context length
    POST /v1/completions        prompt (text or list) -> continuation(s); stream: server-sent events
    POST /v1/chat/completions   messages -> the next speech, in the template below

Chat template (a character model trained on plays knows "SPEAKER:" turns): each message becomes
`NAME:\\n<content>\\n\\n`, NAME being the message's `name` in capitals or else USER / ASSISTANT;
a system (or developer) message becomes its content and a blank line, with no speaker. The
reply is primed with `ASSISTANT:\\n`, and without a `stop` of its own it ends at the first
blank line (the end of the speech).

A request names the model as OpenAI's API requires, or leaves `model` out (as llama.cpp's server
allows): a server has one model; another name is a 404. Usage is counted in characters.
Characters of a prompt outside the model's vocabulary are dropped (as the console does) and
named in the response's `dropped_characters` field (in the first chunk when streaming). Every
error is an OpenAI error object `{"error": {"message", "type", "param", "code"}}` with a 4xx
status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinyllm.artifacts import LoadedModel
from tinyllm.generation import SamplingSettings, SettingsError, split_unknown
from tinyllm.serve.scheduler import End, Failure, Piece, Scheduler

log = logging.getLogger("tinyllm.serve")

CHAT_STOP = "\n\n"  # a chat reply ends with its speech
DISCONNECT_CHECK_S = 0.5  # how often a whole (not streamed) response looks for a gone client
_PAGE = {  # the only files the server ever sends: name -> media type
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}


@dataclass(frozen=True)
class ServeConfig:
    """What one server allows; the defaults suit a laptop serving a character model."""

    model_id: str = "tinyllm"
    api_key: str | None = None
    max_batch: int = 16  # requests decoded together; more wait for a slot
    # text is handed to the event loop at most this often (seconds): under load a client gets
    # fewer, longer pieces, and the cores go to decoding instead of per-event work
    stream_interval: float = 0.02
    max_tokens_cap: int = 4096
    default_max_tokens: int = 256
    max_prompt_chars: int = 32_768  # per prompt (the model sees its last context_length)
    max_body_bytes: int = 1_048_576
    max_n: int = 8  # choices per request (times the prompts of a list)
    max_stops: int = 4
    max_stop_chars: int = 200
    max_waiting: int = 256  # sequences queued for a slot; beyond it: 429, try again later


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error_response(status: int, message: str, param=None, code=None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
    kind = kind.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


# --- request bodies (types only; ranges are SamplingSettings' job) ------------------------------


class _Body(BaseModel):
    # strict: "0.5" is not a number, 1.0 is not an integer; other OpenAI fields are ignored
    # unless they ask for what this server does not do (_UNSUPPORTED, below)
    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None  # left out or null: the one model this server has
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's: `extra_body={"top_k": ...}` (as vLLM)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = 1  # null is the default, as OpenAI's API takes it
    stream: bool | None = False
    stream_options: dict | None = None

    @field_validator("n", "stream")
    @classmethod
    def _null_is_the_default(cls, value, info):
        return cls.model_fields[info.field_name].default if value is None else value


# OpenAI fields that ask for what this server does not do, with the values that ask for nothing:
# any other value is a 400 naming the field, not an answer that looks as if it had been honoured
_UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "suffix": (None, ""), "best_of": (None, 1), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
}  # fmt: skip


class CompletionBody(_Body):
    prompt: str | list[str]


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None
    name: str | None = None


class ChatBody(_Body):
    messages: list[Message]
    max_completion_tokens: int | None = None


def render_chat(messages: list[Message]) -> str:
    """The messages as a play script, primed for the assistant's speech (module docstring)."""
    parts = []
    for message in messages:
        content = _content_text(message.content)
        if message.role in ("system", "developer"):
            parts.append(f"{content}\n\n")
        else:
            name = (message.name or message.role).strip().upper()
            parts.append(f"{name}:\n{content}\n\n")
    return "".join(parts) + "ASSISTANT:\n"


def _content_text(content: str | list[dict] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, "only text content parts are supported", "messages")
        texts.append(part["text"])
    return "".join(texts)


# --- the app ------------------------------------------------------------------------------------


class _BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 before the app reads them (declared
    length or, for chunked bodies, counted as they arrive)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.limit)
        chunks, size, more = [], 0, True
        while more and not too_big:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            too_big = size > self.limit
        if too_big:
            response = _error_response(
                413, f"the request body is over {self.limit:,} bytes; send less", None,
                "request_too_large",
            )  # fmt: skip
            return await response(scope, receive, send)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[dict], receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()

    return replayed


def create_app(loaded: LoadedModel, config: ServeConfig | None = None) -> FastAPI:
    """The app serving `loaded`; its decode thread starts and stops with the app (lifespan)."""
    config = config or ServeConfig()
    from tinyllm.console import settings_from_metadata

    defaults, warning = settings_from_metadata(loaded.metadata)
    if warning:
        log.warning("%s", warning)
    defaults = defaults.updated(max_tokens=min(config.default_max_tokens, config.max_tokens_cap))
    tokenizer, model = loaded.tokenizer, loaded.model
    scheduler = Scheduler(model, tokenizer, config.max_batch, config.stream_interval)
    page = {
        name: (resources.files("tinyllm.serve") / "static" / name).read_bytes() for name in _PAGE
    }
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    # no redirect of `/v1/completions/` to `/v1/completions`: a 404 error object, not a bare 307
    app = FastAPI(title="tinyllm", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)  # fmt: skip
    app.state.scheduler = scheduler
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

    # --- errors: always the OpenAI error object ---

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        log.info("%s %s refused (%d): %s", request.method, request.url.path, e.status, e.message)
        return _error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no such route: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
        return _error_response(e.status_code, message.get(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error_response(500, f"internal error: {type(e).__name__}")

    # --- helpers ---

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), config.api_key.encode()
        ):
            raise APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                           None, "invalid_api_key")  # fmt: skip

    async def parse(request: Request, kind: type[_Body]) -> _Body:
        authorize(request)
        raw = await request.body()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise APIError(400, f"the body is not valid JSON ({e.msg} at character {e.pos})",
                           None, "invalid_json") from None  # fmt: skip
        except (UnicodeDecodeError, RecursionError, ValueError):
            # ValueError: an integer of more digits than Python converts (4,300)
            raise APIError(400, "the body is not valid JSON (not UTF-8, nested too deeply, or "
                           "a number too long)", None, "invalid_json") from None  # fmt: skip
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", None, "invalid_json")
        try:  # JSON's \ud800 escapes decode to lone surrogates, which no text can hold
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise APIError(400, "the body holds a lone surrogate (an unpaired \\ud800-\\udfff "
                           "escape): send valid Unicode text", None,
                           "invalid_json") from None  # fmt: skip
        try:
            body = kind.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"] if not _is_type_tag(p)) or None
            raise APIError(400, f"{param}: {first['msg']}", param, "invalid_value") from None
        if body.stream_options is not None and not body.stream:  # as OpenAI's API answers
            raise APIError(400, "stream_options is only allowed with stream: true",
                           "stream_options")  # fmt: skip
        for name, neutral in _UNSUPPORTED.items():
            if name in (body.model_extra or {}) and body.model_extra[name] not in neutral:
                raise APIError(400, f"{name} is not supported by this server: leave it out",
                               name, "unsupported_parameter")  # fmt: skip
        if body.model is not None and body.model != config.model_id:
            raise APIError(404, f"model {body.model!r} does not exist; this server has "
                           f"{config.model_id!r} (GET /v1/models)", "model",
                           "model_not_found")  # fmt: skip
        return body

    def settings_of(body: _Body, max_tokens: int | None, stop) -> SamplingSettings:
        if not isinstance(body.n, int) or not 1 <= body.n <= config.max_n:
            raise APIError(400, f"n must be from 1 to {config.max_n}, got {body.n}", "n")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > config.max_stops or any(len(s) > config.max_stop_chars for s in stops):
            raise APIError(400, f"at most {config.max_stops} stop texts of at most "
                           f"{config.max_stop_chars} characters", "stop")  # fmt: skip
        given = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                 "top_k": body.top_k, "seed": body.seed,
                 "stop": tuple(s for s in stops if s) or None}  # fmt: skip
        try:
            settings = defaults.updated(**{k: v for k, v in given.items() if v is not None})
            return settings.within(config.max_tokens_cap)
        except SettingsError as e:
            raise APIError(400, str(e), e.field, "invalid_value") from None

    def encode(prompt: str, param: str) -> tuple[list[int], list[str], int]:
        if len(prompt) > config.max_prompt_chars:
            raise APIError(400, f"the prompt is {len(prompt):,} characters; this server takes at "
                           f"most {config.max_prompt_chars:,}", param,
                           "prompt_too_long")  # fmt: skip
        kept, dropped = split_unknown(tokenizer, prompt, lowercase=loaded.lowercase)
        if not kept:
            what = "empty" if not prompt else "only characters the model does not know"
            raise APIError(400, f"the prompt is {what}: give at least one character of the "
                           "model's vocabulary", param, "empty_prompt")  # fmt: skip
        return tokenizer.encode(kept), dropped, len(kept)

    def submit(prompts: list[list[int]], settings: SamplingSettings, n: int):
        if scheduler.waiting + len(prompts) * n > config.max_waiting:
            raise APIError(429, f"the server is busy ({scheduler.waiting} requests wait for a "
                           "slot); try again shortly", None, "server_busy")  # fmt: skip
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for p, ids in enumerate(prompts):
            for i in range(n):
                seed = None if settings.seed is None else (settings.seed + i) % 2**63
                jobs.append(scheduler.submit(ids, settings.updated(seed=seed), events, p * n + i))
        return jobs, events

    async def events_of(jobs, events: asyncio.Queue) -> AsyncIterator[Piece | End]:
        """The jobs' events until each has ended; cancels what is left when the caller stops
        listening (a client that went away)."""
        open_jobs = len(jobs)
        try:
            while open_jobs:
                for event in _coalesced([await events.get(), *_drain(events)]):
                    if isinstance(event, Failure):
                        raise APIError(event.status, event.message)
                    if isinstance(event, End):
                        open_jobs -= 1
                    yield event
        finally:
            for job in jobs:
                scheduler.cancel(job)

    async def collect(request: Request, jobs, events: asyncio.Queue):
        """Texts and ends of every choice; None if the client disconnected first."""
        texts = {job.index: [] for job in jobs}
        ends: dict[int, End] = {}
        checked = time.monotonic()
        try:
            while len(ends) < len(jobs):
                if time.monotonic() - checked > DISCONNECT_CHECK_S:
                    if await request.is_disconnected():
                        return None
                    checked = time.monotonic()
                try:
                    event = await asyncio.wait_for(events.get(), timeout=DISCONNECT_CHECK_S)
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, Failure):
                    raise APIError(event.status, event.message)
                if isinstance(event, Piece):
                    texts[event.index].append(event.text)
                else:
                    ends[event.index] = event
        finally:
            for job in jobs:
                scheduler.cancel(job)
        return {i: "".join(t) for i, t in texts.items()}, ends

    def sse(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    async def run(request, body, prompts, settings, prompt_chars, dropped, chat: bool):
        jobs, events = submit(prompts, settings, body.n)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": ident, "created": int(time.time()), "model": config.model_id}
        extra = {"dropped_characters": dropped} if dropped else {}
        if not body.stream:
            result = await collect(request, jobs, events)
            if result is None:
                return Response(status_code=499)
            texts, ends = result
            choices = []
            for i in sorted(texts):
                if chat:
                    choice = {"index": i, "message": {"role": "assistant", "content": texts[i]}}
                else:
                    choice = {"index": i, "text": texts[i], "logprobs": None}
                choices.append(choice | {"finish_reason": ends[i].finish_reason})
            usage = _usage(prompt_chars, sum(e.characters for e in ends.values()))
            return JSONResponse(
                {**head, "object": kind, "choices": choices, "usage": usage} | extra
            )

        include_usage = bool((body.stream_options or {}).get("include_usage"))
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> dict:
            if chat:
                delta = ({"role": "assistant"} if first else {}) | (
                    {"content": text} if text is not None else {})  # fmt: skip
                choice = {"index": index, "delta": delta}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None}
            return {**head, "object": chunk_kind, "choices": [choice | {"finish_reason": finish}]}

        async def stream() -> AsyncIterator[str]:
            characters = 0
            try:
                if chat:  # the role first, as OpenAI does
                    for job in jobs:
                        yield sse(chunk(job.index, "", None, first=True) | extra)
                elif extra:
                    yield sse(chunk(0, "", None) | extra)
                async for event in events_of(jobs, events):
                    if isinstance(event, Piece):
                        yield sse(chunk(event.index, event.text, None))
                    else:
                        characters += event.characters
                        yield sse(chunk(event.index, None if chat else "", event.finish_reason))
                if include_usage:
                    usage = _usage(prompt_chars, characters)
                    yield sse({**head, "object": chunk_kind, "choices": [], "usage": usage})
                yield sse("[DONE]")
            except APIError as e:
                yield sse(error_body(e.message, "server_error"))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    # --- routes ---

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: uptime checks, `curl -I`
    async def health():
        if not scheduler.alive:
            return _error_response(503, "the decode loop is not running")
        return {"status": "ok", "model": config.model_id, "active": scheduler.active,
                "waiting": scheduler.waiting}  # fmt: skip

    def model_card() -> dict:
        meta = loaded.metadata or {}
        return {"id": config.model_id, "object": "model", "created": created,
                "owned_by": "tinyllm", "val_loss": meta.get("val_loss"), "step": meta.get("step"),
                "context_length": model.config.context_length,
                "vocab_size": tokenizer.vocab_size,
                "parameters": model.num_parameters()}  # fmt: skip

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request):
        authorize(request)
        if name != config.model_id:
            raise APIError(404, f"model {name!r} does not exist", "model", "model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionBody)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt must be text or a non-empty list of texts", "prompt")
        settings = settings_of(body, body.max_tokens, body.stop)
        if len(prompts) * body.n > config.max_n:
            raise APIError(400, f"prompts x n must be at most {config.max_n}, got "
                           f"{len(prompts)} x {body.n}", "n")  # fmt: skip
        encoded = [encode(p, "prompt") for p in prompts]
        dropped = sorted({c for _, d, _ in encoded for c in d})
        prompt_chars = sum(chars for _, _, chars in encoded)
        return await run(request, body, [ids for ids, _, _ in encoded], settings, prompt_chars,
                         dropped, chat=False)  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatBody)
        if not body.messages:
            raise APIError(400, "messages must hold at least one message", "messages")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens
        stop = body.stop if body.stop is not None else CHAT_STOP
        settings = settings_of(body, max_tokens, stop)
        ids, dropped, chars = encode(render_chat(body.messages), "messages")
        return await run(request, body, [ids], settings, chars, dropped, chat=True)

    def static(name: str) -> Response:
        return Response(page[name], media_type=_PAGE[name], headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; style-src 'self'",
            "X-Content-Type-Options": "nosniff"})  # fmt: skip

    @app.api_route("/", methods=["GET", "HEAD"])
    async def index():
        return static("index.html")

    @app.get("/static/{name}")
    async def static_file(name: str):
        if name not in page or name == "index.html":
            raise APIError(404, f"no such file: {name[:100]!r}", None, "not_found")
        return static(name)

    return app


def _drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _coalesced(events: list) -> list:
    """Consecutive pieces of one choice as one piece: when the client (or the event loop)
    falls behind the decoder, it gets fewer, longer chunks instead of a growing backlog."""
    out: list = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, Piece) and isinstance(last, Piece) and last.index == event.index:
            out[-1] = Piece(event.index, last.text + event.text)
        else:
            out.append(event)
    return out


def _is_type_tag(part) -> bool:
    """pydantic's union members in an error location ('str', 'list[str]'): not a field name."""
    return isinstance(part, str) and (part in ("str", "list[str]", "dict", "list[dict]")
                                      or part.startswith(("list[", "literal[")))  # fmt: skip


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip
