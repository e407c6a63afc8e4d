"""`python -m tinyllm.serve` (= `tinyllm-serve`) as a user runs it: it prints where it serves,
asks for the API key when given one, and refuses bad input with one line and exit code 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install -e ".[serve]"')

from test_serve import MODEL_ID, save_tiny_model  # noqa: E402


def serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinyllm.serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | (env or {}),
    )  # fmt: skip


def wait_until_up(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.1)


def test_the_command_prints_its_url_and_requires_the_api_key(tmp_path):
    save_tiny_model(tmp_path / "run")
    process = serve(str(tmp_path / "run"), "--port", "0", "--model-name", MODEL_ID,
                    env={"TINYLLM_API_KEY": "s3cret"})  # fmt: skip
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        assert "val loss 4.1234" in lines[0] and "API key required" in lines[1]
        url = lines[2].split()[2]
        assert url.startswith("http://127.0.0.1:")
        wait_until_up(process, url)
        assert httpx.get(url).status_code == 200  # the page itself is public
        for key in (None, "wrong"):
            client = openai.OpenAI(base_url=url + "v1", api_key=key or "-", max_retries=0)
            with pytest.raises(openai.AuthenticationError) as error:
                client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=3)
            assert error.value.status_code == 401
            assert error.value.body["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=url + "v1", api_key="s3cret", max_retries=0)
        reply = client.completions.create(model=MODEL_ID, prompt="ROMEO:", max_tokens=3)
        assert len(reply.choices[0].text) == 3
        assert [m.id for m in client.models.list().data] == [MODEL_ID]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "stops",
    [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
    ids=["ctrl-c", "sigterm", "ctrl-c twice"],
)
def test_ctrl_c_and_sigterm_stop_the_server_alike(tmp_path, stops):
    """`kill` (a service manager's stop) ends the server as Ctrl-C does: uvicorn shuts down,
    then one `stopped` line and exit 0, not a silent death by the signal (exit 143). A second
    Ctrl-C at once does not cut the app's own shutdown short (uvicorn's forced exit logged a
    CancelledError traceback)."""
    save_tiny_model(tmp_path / "run")
    process = serve(str(tmp_path / "run"), "--port", "0")
    try:
        url = [process.stdout.readline() for _ in range(3)][2].split()[2]
        wait_until_up(process, url)
    finally:
        for stop in stops:
            process.send_signal(stop)
            time.sleep(0.01)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "tinyllm-serve: stopped"


# A signal during the start-up that a library swallows (one did, while the app's modules were
# imported: the server then started as if nothing had happened): simulated by a function that
# catches everything, where the start-up reads its options
SWALLOWED_AT_START = """
import os, signal, sys, time
from tinyllm.serve import server
signum, real = int(sys.argv.pop(1)), server.build_parser
def build_parser():
    try:
        os.kill(os.getpid(), signum)
        time.sleep(5)
    except BaseException:
        pass
    return real()
server.build_parser = build_parser
sys.exit(server.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_lost_during_the_start_up_still_stops_the_server(tmp_path, stop):
    save_tiny_model(tmp_path / "run")
    script = [sys.executable, "-c", SWALLOWED_AT_START, str(int(stop))]
    result = subprocess.run([*script, str(tmp_path / "run"), "--port", "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 130, result.stdout + result.stderr
    assert "serving at" not in result.stdout and "Traceback" not in result.stderr
    assert result.stderr.strip() == "tinyllm-serve: interrupted before serving"


def test_stopping_ends_the_requests_in_progress_with_an_error_not_a_cut(tmp_path):
    """Ctrl-C or SIGTERM during requests: a stream ends with an error event and a whole response
    is a 503 error object, at once; uvicorn's graceful shutdown would otherwise wait for them,
    then cut the stream mid-text and answer the other a plain-text 500, with a traceback."""
    import threading

    save_tiny_model(tmp_path / "run")
    process = serve(str(tmp_path / "run"), "--port", "0", "--max-tokens-cap", "100000")
    body = {"prompt": "ROMEO:", "max_tokens": 100_000}  # seconds at the least
    whole = {}
    try:
        url = [process.stdout.readline() for _ in range(3)][2].split()[2]
        wait_until_up(process, url)

        def ask_whole():
            whole["response"] = httpx.post(url + "v1/completions", json=body, timeout=60)

        asking = threading.Thread(target=ask_whole)
        asking.start()
        with httpx.stream("POST", url + "v1/completions", json=body | {"stream": True},
                          timeout=60) as stream:  # fmt: skip
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"] is not None
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert time.monotonic() - stopped < 2.5  # uvicorn's graceful limit is 3 s
        assert json.loads(events[-1])["error"]["message"] == "the server is shutting down"
        asking.join(timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert whole["response"].status_code == 503
    assert whole["response"].json()["error"]["message"] == "the server is shutting down"
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "graceful shutdown exceeded" not in stderr


def test_an_empty_api_key_is_refused_and_a_bracketed_host_read(capsys):
    """`--api-key "$KEY"` with KEY unset would give a server no request could use."""
    from tinyllm.serve.server import build_parser

    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["--api-key", " "])
    assert refused.value.code == 2
    assert "--api-key: is empty: give the key, or leave --api-key out" in capsys.readouterr().err
    assert build_parser().parse_args(["--host", "[::1]"]).host == "::1"


def test_bad_model_and_busy_port_get_one_line_and_exit_2(tmp_path):
    process = serve(str(tmp_path / "missing"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        f"tinyllm-serve: error: model path {tmp_path / 'missing'} does not exist"
    ]
    save_tiny_model(tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve(str(tmp_path / "run"), "--port", str(port))
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and "Traceback" not in stderr
    assert "cannot listen on" in stderr and "--port" in stderr


@pytest.mark.parametrize(
    ("option", "most"), [("--threads", 1024), ("--max-batch", 1024), ("--max-tokens-cap", 100_000)]
)
def test_options_that_size_allocations_are_bounded(option, most, capsys):
    """A batch of 10^8 (its KV cache) or 10^5 threads: one line before anything is allocated;
    a cap on max_tokens above what a request may ask (generation.MAX_TOKENS) would promise
    what every request is then refused."""
    from tinyllm.serve.server import build_parser

    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args([option, "100000000"])
    assert refused.value.code == 2
    assert f"100000000 must be from 1 to {most}" in capsys.readouterr().err
    assert getattr(build_parser().parse_args([option, str(most)]), option[2:].replace("-", "_"))


def test_the_model_id_is_the_run_folder_name():
    from pathlib import Path

    from tinyllm.serve.server import model_id_of

    assert model_id_of(Path("outputs/runs/2026-01-02_10-00-00/best")) == "2026-01-02_10-00-00"
    assert model_id_of(Path("outputs/multiruns/2026-01-02/3/best")) == "2026-01-02-3"
    assert model_id_of(Path("runs/a/checkpoints/last.ckpt")) == "a"  # the run's, as best/'s
    assert model_id_of(Path("elsewhere/my-model.ckpt")) == "my-model"
    assert model_id_of(None) == "tinyllm"
