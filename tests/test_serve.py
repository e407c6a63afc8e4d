"""The HTTP server against real clients: a live uvicorn on a loopback port, the official
`openai` client, raw HTTP for malformed requests, a bounded load test, and the chat page in
headless Chromium."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tinyllm.artifacts import load_model, save_artifacts
from tinyllm.generation import SamplingSettings, generate_text
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import CharacterTokenizer

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install -e ".[serve]"')
import uvicorn  # noqa: E402

from tinyllm.serve.app import ServeConfig, create_app, render_chat  # noqa: E402

# under pytest-xdist the whole file runs on one worker: one server (and browser) for it all
pytestmark = pytest.mark.xdist_group("serve")

VOCAB = "ROMEO:\nBut soft, what light through yonder window breaks? JULIET! Ay me.\n" + (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789;'-"
)
MODEL_ID = "tiny-test"
CAP = 20_000  # max_tokens cap: long enough for the page to stream while Stop is pressed


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    tokenizer = CharacterTokenizer().fit(VOCAB)
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=48, n_layer=1,
                         n_head=2, n_embd=32)  # fmt: skip
    metadata = {"val_loss": 4.1234, "step": 7, "console": {"temperature": 1.0, "top_k": 0}}
    return save_artifacts(directory / "best", Transformer(config), tokenizer, metadata)


class ErrorLog(logging.Handler):
    """Records ERROR (and worse) from the server's loggers."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def running(app):
    """`app` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One live server for the module: (base URL, the loaded model, the app, its error log)."""
    path = save_tiny_model(tmp_path_factory.mktemp("serve"))
    loaded = load_model(path)
    config = ServeConfig(model_id=MODEL_ID, max_batch=8, max_tokens_cap=CAP,
                         max_prompt_chars=2_000, max_body_bytes=20_000, max_n=4)  # fmt: skip
    app = create_app(loaded, config)
    errors = ErrorLog()
    for name in ("tinyllm.serve", "uvicorn.error"):
        logging.getLogger(name).addHandler(errors)
    with running(app) as base:
        yield base, load_model(path), app, errors
    for name in ("tinyllm.serve", "uvicorn.error"):
        logging.getLogger(name).removeHandler(errors)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def wait_idle(base: str, timeout: float = 10.0) -> dict:
    """/health once no request is active or waiting (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(base + "/health").json()
        if health["active"] == 0 and health["waiting"] == 0:
            return health
        assert time.monotonic() < deadline, f"requests still running: {health}"
        time.sleep(0.05)


# --- the OpenAI client ------------------------------------------------------------------------


def test_models_lists_the_model_with_loss_and_context(client):
    [card] = client.models.list().data
    assert card.id == MODEL_ID
    assert card.model_extra["val_loss"] == 4.1234 and card.model_extra["context_length"] == 48
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_completion_is_the_console_text_for_the_same_seed(server, client):
    """The batched server and the console's generate_text give the same text for a seed,
    whatever else the server is decoding at the time."""
    _, loaded, _, _ = server
    prompt, settings = "ROMEO:\n", SamplingSettings(max_tokens=120, temperature=0.9, top_k=20,
                                                    top_p=0.95, seed=42)  # fmt: skip
    expected = generate_text(loaded.model, loaded.tokenizer, prompt, settings)

    def ask(max_tokens: int = 120, seed: int = 42):
        return client.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=max_tokens, temperature=0.9, top_p=0.95,
            seed=seed, extra_body={"top_k": 20})  # fmt: skip

    alone = ask()
    assert alone.choices[0].text == expected and alone.choices[0].finish_reason == "length"
    assert alone.usage.completion_tokens == 120 and alone.usage.prompt_tokens == len(prompt)
    with ThreadPoolExecutor(6) as pool:  # the same request in a busy batch
        others = [pool.submit(ask, 60 + 17 * i, i) for i in range(5)]
        busy = pool.submit(ask)
        [f.result() for f in others]
        assert busy.result().choices[0].text == expected


def test_streaming_gives_the_same_text_piece_by_piece(client):
    # long enough that a client slowed by a busy machine still reads it in several pieces:
    # text the client has not read yet goes out together in the next piece
    args = {"model": MODEL_ID, "prompt": "JULIET:", "max_tokens": 400, "seed": 3}
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(**args, stream=True))
    assert len(chunks) > 2  # pieces as they come (one character each unless the client lags)
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_texts_end_the_text_and_are_not_shown(client):
    args = {"model": MODEL_ID, "prompt": "But ", "max_tokens": 80, "seed": 5}
    text = client.completions.create(**args).choices[0].text
    stop = text[20:22]
    cut = text.find(stop)
    choice = client.completions.create(**args, stop=stop).choices[0]
    assert (choice.text, choice.finish_reason) == (text[:cut], "stop")
    # a list: the first of them to appear ends it; streaming agrees
    stops = [text[30:33], text[10:12], "never-generated"]
    first = min(text.find(s) for s in stops if s in text)
    choice = client.completions.create(**args, stop=stops).choices[0]
    assert (choice.text, choice.finish_reason) == (text[:first], "stop")
    streamed = list(client.completions.create(**args, stop=stops, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text[:first]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_n_choices_and_lists_of_prompts(client):
    args = {"model": MODEL_ID, "max_tokens": 25, "seed": 9}
    single = client.completions.create(**args, prompt="ROMEO:").choices[0].text
    three = client.completions.create(**args, prompt="ROMEO:", n=3)
    texts = [c.text for c in sorted(three.choices, key=lambda c: c.index)]
    assert texts[0] == single and len(set(texts)) == 3  # choice i is seeded with seed + i
    assert three.usage.completion_tokens == 75 and three.usage.prompt_tokens == len("ROMEO:")
    both = client.completions.create(**args, prompt=["ROMEO:", "JULIET:"], n=2)
    assert sorted(c.index for c in both.choices) == [0, 1, 2, 3]
    assert next(c.text for c in both.choices if c.index == 0) == single
    streamed = list(client.completions.create(**args, prompt="ROMEO:", n=3, stream=True))
    joined = {i: "".join(c.choices[0].text for c in streamed if c.choices[0].index == i)
              for i in range(3)}  # fmt: skip
    assert [joined[i] for i in range(3)] == texts


def test_chat_completions_follow_the_template(server, client):
    _, loaded, _, _ = server
    messages = [{"role": "system", "content": "A street in Verona."},
                {"role": "user", "content": "But soft!", "name": "Romeo"},
                {"role": "assistant", "content": "Ay me."},
                {"role": "user", "content": "What light?"}]  # fmt: skip
    from tinyllm.serve.app import Message

    rendered = render_chat([Message(**m) for m in messages])
    assert rendered == ("A street in Verona.\n\nROMEO:\nBut soft!\n\nASSISTANT:\nAy me.\n\n"
                        "USER:\nWhat light?\n\nASSISTANT:\n")  # fmt: skip
    settings = SamplingSettings(max_tokens=200, temperature=1.0, seed=11, stop="\n\n")
    expected = generate_text(loaded.model, loaded.tokenizer, rendered, settings)
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=200,
                                           seed=11)  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == ("stop" if len(expected) < 200 else "length")
    assert reply.usage.prompt_tokens == len(rendered)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages,
                                                 max_tokens=200, seed=11, stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_stream_usage_on_request(client):
    chunks = list(
        client.completions.create(
            model=MODEL_ID,
            prompt="Ay",
            max_tokens=12,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


# --- bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"max_tokens": CAP + 1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"extra_body": {"top_k": -3}}, "top_k"),
        ({"n": 5}, "n"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x" * 2_001}, "prompt"),
        ({"prompt": "\u00e9\u00e9"}, "prompt"),  # nothing left once unknown characters go
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_values_get_400_naming_the_parameter(client, changes, param):
    args = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": 5} | changes
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(**args)
    assert error.value.status_code == 400 and error.value.body["param"] == param
    assert error.value.body["message"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "hi"}], "messages.0.role"),
        ([{"role": "user", "content": 5}], "messages.0.content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages"),
        ([], "messages"),
    ],
)
def test_bad_chat_messages_get_400(client, messages, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3)
    assert error.value.body["param"] == param


@pytest.mark.parametrize(
    "changes",
    [{"logprobs": 2}, {"echo": True}, {"best_of": 3}, {"suffix": "END"},
     {"presence_penalty": 0.5}, {"frequency_penalty": -1.0}, {"logit_bias": {"5": 100}}],
)  # fmt: skip
def test_fields_asking_for_what_the_server_does_not_do_get_400(client, changes):
    """Answered as if left out, they would look honoured (no logprobs, no prompt echoed, no
    penalty); the values that ask for nothing (false, 0, 1 choice, {}) are fine."""
    args = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": 3}
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(**args, **changes)
    (name,) = changes
    assert error.value.body["param"] == name and error.value.body["code"] == "unsupported_parameter"
    neutral = {"logprobs": None, "echo": False, "best_of": 1, "suffix": "", "logit_bias": {},
               "presence_penalty": 0, "frequency_penalty": 0.0}  # fmt: skip
    assert len(client.completions.create(**args, **neutral).choices[0].text) == 3
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Ay"}],
                                       max_tokens=3, logprobs=True, top_logprobs=2)  # fmt: skip
    assert error.value.body["param"] in ("logprobs", "top_logprobs")


def test_stream_options_without_stream_is_400_as_in_openai(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL_ID, prompt="A", max_tokens=2,
                                  stream_options={"include_usage": True})  # fmt: skip
    assert error.value.body["param"] == "stream_options"


def test_head_requests_and_a_trailing_slash(server):
    """`curl -I` and uptime checks send HEAD; `/v1/completions/` is no route (a 404 error
    object, not a bare redirect)."""
    assert httpx.head(server[0] + "/health").status_code == 200
    assert httpx.head(server[0] + "/").status_code == 200
    slash = httpx.post(server[0] + "/v1/completions/", json={"prompt": "A", "max_tokens": 2})
    assert slash.status_code == 404 and "no such route" in slash.json()["error"]["message"]


def test_null_means_the_default_as_in_openai(server):
    """OpenAI's API takes null for n and stream (1, false); 0 completion tokens is no default."""
    url = server[0] + "/v1/chat/completions"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Ay"}], "max_tokens": 3}
    reply = httpx.post(url, json=body | {"n": None, "stream": None}, timeout=30)
    assert reply.status_code == 200 and len(reply.json()["choices"]) == 1
    refused = httpx.post(url, json=body | {"max_completion_tokens": 0}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_the_model_may_be_left_out_as_llama_cpp_allows(server):
    """Without `model` (or with null) the request goes to the one model and names it."""
    url = server[0] + "/v1/completions"
    for body in ({"prompt": "ROMEO:", "max_tokens": 3}, {"prompt": "A", "model": None}):
        reply = httpx.post(url, json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == MODEL_ID


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-9", prompt="a", max_tokens=2)
    assert error.value.body["code"] == "model_not_found"


def test_unknown_characters_are_dropped_and_named(client):
    reply = client.completions.create(model=MODEL_ID, prompt="ROMEO\u00e9:\u2014", max_tokens=3)
    assert reply.model_extra["dropped_characters"] == ["\u00e9", "\u2014"]
    assert reply.usage.prompt_tokens == len("ROMEO:")


def test_a_model_of_a_lowercased_corpus_reads_capitals_as_small_letters(tmp_path):
    tokenizer = CharacterTokenizer().fit(VOCAB.lower())
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=1, n_head=1,
                         n_embd=8)  # fmt: skip
    path = save_artifacts(tmp_path / "best", Transformer(config), tokenizer, {"lowercase": True})
    with running(create_app(load_model(path), ServeConfig(model_id=MODEL_ID))) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        reply = client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=2)
    assert reply.model_extra.get("dropped_characters") in (None, [])
    assert reply.usage.prompt_tokens == len("romeo:")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"[" * 15_000, 400, "nested too deeply"),
        (b'{"model": "\xff"}', 400, "not UTF-8"),
        (json.dumps({"model": MODEL_ID, "prompt": 7}).encode(), 400, "prompt"),
        (json.dumps({"model": MODEL_ID, "prompt": "a", "temperature": "hot"}).encode(), 400,
         "temperature"),
        (json.dumps({"model": MODEL_ID, "prompt": "a", "n": 1.5}).encode(), 400, "n"),
        (json.dumps({"model": ["tiny-test"], "prompt": "a"}).encode(), 400, "model"),
        (json.dumps({"model": MODEL_ID, "prompt": "a" * 30_000}).encode(), 413, "bytes"),
        (json.dumps({"model": MODEL_ID, "messages": []}).encode(), 400, "prompt"),
        (b'{"model": "tiny-test", "prompt": "ROMEO\\ud800:"}', 400, "lone surrogate"),
        (b'{"prompt": "a", "seed": 1' + b"0" * 5000 + b"}", 400, "a number too long"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_an_openai_error_object(server, body, status, fragment):
    response = httpx.post(server[0] + "/v1/completions", content=body,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"]


def test_a_client_gone_before_its_whole_body_is_no_error(server):
    base, _, _, errors = server
    errors.records.clear()
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
    time.sleep(0.3)
    assert [r.getMessage() for r in errors.records] == []
    assert httpx.get(base + "/health").json()["status"] == "ok"


def test_a_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(30):
            yield b"x" * 1000

    response = httpx.post(server[0] + "/v1/completions", content=chunks())
    assert response.status_code == 413 and "bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/server.py",
             "/static/index.html/..", "/../../etc/passwd", "/app.py", "/static/"]
)  # fmt: skip
def test_nothing_but_the_page_is_served(server, path):
    response = httpx.get(server[0] + path)
    assert response.status_code == 404 and "error" in response.json()


def test_the_page_and_its_files(server):
    page = httpx.get(server[0] + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{server[0]}/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert f"/static/{name}" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


# --- disconnects and load ---------------------------------------------------------------------


def test_a_client_that_goes_away_frees_its_slot(server):
    base = server[0]
    body = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": CAP, "stream": True}
    with httpx.stream("POST", base + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        [next(lines) for _ in range(10)]
        assert httpx.get(base + "/health").json()["active"] == 1
    started = time.monotonic()
    wait_idle(base, timeout=5)
    assert time.monotonic() - started < 5


def test_a_whole_response_stops_when_its_client_gives_up(server):
    """Not streaming: the server notices the closed connection while it waits (within about a
    second) and stops generating."""
    base = server[0]
    body = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": CAP}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.3))
    wait_idle(base, timeout=5)


def test_load_many_clients_some_cancelled_some_malformed(server):
    """A fixed mix of 48 requests at once; afterwards the server is idle, healthy, answers a
    normal request, and logged no error."""
    base, loaded, _, errors = server
    errors.records.clear()

    async def streaming(client, i: int, cancel: bool):
        body = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": 300 if cancel else 40 + i,
                "seed": i, "stream": True}  # fmt: skip
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            seen = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(line[6:])
                    if cancel and len(seen) == 5:
                        return "cancelled"
        assert seen[-1] == "[DONE]"
        text = "".join(json.loads(s)["choices"][0]["text"] for s in seen[:-1])
        assert len(text) == 40 + i
        return "streamed"

    async def whole(client, i: int):
        body = {"model": MODEL_ID, "prompt": "JULIET:", "max_tokens": 30, "seed": i, "n": 2}
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 200 and len(response.json()["choices"]) == 2
        return "whole"

    async def malformed(client, i: int):
        bodies = [b"{", b'{"model": "tiny-test", "prompt": 1}', b'{"model": "nope", "prompt": "a"}',
                  b'{"model": "tiny-test", "prompt": "a", "max_tokens": 99999999}']  # fmt: skip
        response = await client.post("/v1/completions", content=bodies[i % 4])
        assert response.status_code in (400, 404) and "error" in response.json()
        return "refused"

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            jobs = [streaming(client, i, cancel=i % 3 == 0) for i in range(24)]
            jobs += [whole(client, i) for i in range(12)]
            jobs += [malformed(client, i) for i in range(12)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=90)

    outcomes = asyncio.run(main())
    assert sorted(set(outcomes)) == ["cancelled", "refused", "streamed", "whole"]
    assert wait_idle(base)["status"] == "ok"
    reply = httpx.post(base + "/v1/completions", json={"model": MODEL_ID, "prompt": "Ay",
                                                        "max_tokens": 8, "seed": 1})  # fmt: skip
    expected = generate_text(loaded.model, loaded.tokenizer, "Ay",
                             SamplingSettings(max_tokens=8, temperature=1.0, seed=1))  # fmt: skip
    assert reply.json()["choices"][0]["text"] == expected
    assert [r.getMessage() for r in errors.records] == []


def test_a_failing_decode_step_fails_its_requests_not_the_server(server, client):
    """An error inside the model step ends the requests of that batch with a 500 error object;
    the decode thread goes on with a fresh batch and the next request is served."""
    base, _, app, errors = server
    scheduler = app.state.scheduler

    def broken():
        raise RuntimeError("injected fault")

    scheduler._decoder.step = broken  # this batch only: a failure replaces the decoder
    response = httpx.post(base + "/v1/completions",
                          json={"model": MODEL_ID, "prompt": "Ay", "max_tokens": 5})  # fmt: skip
    assert response.status_code == 500
    assert "injected fault" in response.json()["error"]["message"]
    assert any("decode step failed" in r.getMessage() for r in errors.records)
    assert len(client.completions.create(model=MODEL_ID, prompt="Ay", max_tokens=5)
               .choices[0].text) == 5  # fmt: skip
    assert wait_idle(base)["status"] == "ok"


def test_a_full_queue_answers_429_and_the_server_goes_on(server):
    """One slot, one place in the queue: a third concurrent request is told to come back."""
    _, loaded, _, _ = server
    app = create_app(loaded, ServeConfig(model_id=MODEL_ID, max_batch=1, max_waiting=1,
                                         max_tokens_cap=CAP))  # fmt: skip
    body = {"model": MODEL_ID, "prompt": "ROMEO:", "max_tokens": CAP, "stream": True}
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as first:
            lines = first.iter_lines()  # (kept: dropping it would close the stream)
            next(lines)  # the first request holds the only slot
            with http.stream("POST", "/v1/completions", json=body) as second:
                assert second.status_code == 200
                deadline = time.monotonic() + 10
                while http.get("/health").json()["waiting"] < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                third = http.post("/v1/completions", json=body | {"stream": False})
                assert third.status_code == 429
                assert third.json()["error"]["code"] == "server_busy"
            # the waiting client gave up: its place in the queue is free again at once
            deadline = time.monotonic() + 10
            while (health := http.get("/health").json())["waiting"]:
                assert time.monotonic() < deadline, f"a gone client still waits: {health}"
                time.sleep(0.02)
            assert health["active"] == 1
            with http.stream("POST", "/v1/completions", json=body) as fourth:
                assert fourth.status_code == 200
        assert wait_idle(base)["status"] == "ok"
        reply = http.post("/v1/completions", json={"model": MODEL_ID, "prompt": "Ay",
                                                   "max_tokens": 4})  # fmt: skip
        assert len(reply.json()["choices"][0]["text"]) == 4


# --- the page in a real browser ---------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "no headless Chromium: install one with "
            "`apt-get install chromium chromium-driver` (Debian) to run the page test"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,900"):  # fmt: skip
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_page_streams_a_continuation_and_stop_aborts_it(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = server[0]
    browser.get(base + "/")
    wait = WebDriverWait(browser, 20, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "model-name").text == MODEL_ID)
    assert browser.find_element(By.ID, "model-loss").text == "4.1234"
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("JULIET:")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(CAP))
    browser.find_element(By.ID, "generate").click()
    output = browser.find_element(By.ID, "output-text")
    wait.until(lambda d: len(output.text) >= 20)
    first = len(output.text)
    wait.until(lambda d: len(output.text) > first + 20)  # still arriving: it streams
    assert browser.find_element(By.ID, "output-prompt").text == "JULIET:"
    browser.find_element(By.ID, "stop").click()
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: status.text.startswith("stopped after"))
    shown = len(output.text)
    assert shown < CAP
    wait_idle(base, timeout=5)  # the server stopped generating for it
    time.sleep(0.2)
    assert len(output.text) == shown
    assert browser.find_element(By.ID, "generate").is_enabled()
    # a refused request shows the server's message
    tokens.clear()
    tokens.send_keys(str(CAP + 1))
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: "at most" in status.text)
    assert "error" in status.get_attribute("class")
