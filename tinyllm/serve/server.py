"""The command line of `tinyllm-serve`: load the model as `chat.py` does, bind, run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from tinyllm.interrupts import RememberedCtrlC
from tinyllm.io import OneLineParser, first_line

API_KEY_ENV = "TINYLLM_API_KEY"  # the key from the environment keeps it out of `ps`


def _positive(text: str, most: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1 or (most is not None and value > most):
        bounds = "at least 1" if most is None else f"from 1 to {most}"
        raise argparse.ArgumentTypeError(f"{value} must be {bounds}")
    return value


def _at_most(most: int):
    """`_positive` bounded: for the options that size what is allocated at start (the batch's
    KV cache, threads)."""
    return lambda text: _positive(text, most)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535; 0: any free one)")
    return value


def _api_key(text: str) -> str:
    if not text.strip():  # e.g. `--api-key "$KEY"` with KEY unset: no request could match it
        raise argparse.ArgumentTypeError("is empty: give the key, or leave --api-key out")
    return text.strip()


def _host(text: str) -> str:
    """An address as it is written in URLs too: `[::1]` is `::1`."""
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def build_parser() -> argparse.ArgumentParser:
    from tinyllm.generation import MAX_TOKENS
    from tinyllm.serve.app import ServeConfig

    d = ServeConfig()
    parser = OneLineParser(
        prog="tinyllm-serve",
        description="Serve a trained model: an OpenAI-compatible API (/v1/completions, "
        "/v1/chat/completions) and a chat page at /.",
    )
    add = parser.add_argument
    add("model", nargs="?", help="a run folder, its best/ folder or a .ckpt "
        "(default: the best model of the latest run under outputs/)")  # fmt: skip
    add("--host", type=_host, default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)")  # fmt: skip
    add("--port", type=_port, default=8000, help="port (default 8000; 0: any free port)")
    add("--api-key", type=_api_key, default=os.environ.get(API_KEY_ENV, "").strip() or None,
        help=f"require `Authorization: Bearer KEY` on /v1 (or set {API_KEY_ENV})")  # fmt: skip
    add("--model-name", help="the model id clients send (default: the run folder's name)")
    add("--max-batch", type=_at_most(1024), default=d.max_batch,
        help=f"requests decoded together; more wait (default {d.max_batch})")  # fmt: skip
    add("--max-tokens-cap", type=_at_most(MAX_TOKENS), default=d.max_tokens_cap,
        help=f"largest max_tokens a request may ask (default {d.max_tokens_cap})")  # fmt: skip
    add("--max-prompt-chars", type=_positive, default=d.max_prompt_chars,
        help=f"longest prompt in characters (default {d.max_prompt_chars})")  # fmt: skip
    add("--max-body-bytes", type=_positive, default=d.max_body_bytes,
        help=f"largest request body (default {d.max_body_bytes})")  # fmt: skip
    add("--max-n", type=_positive, default=d.max_n,
        help=f"most choices per request (default {d.max_n})")  # fmt: skip
    add("--threads", type=_at_most(1024), default=None,
        help="CPU threads for the model (default 1, or OMP_NUM_THREADS)")  # fmt: skip
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def model_id_of(path: Path | None) -> str:
    """A readable id: the run folder's name for .../<run>/best or .../<run>/checkpoints/X.ckpt
    (<time>-<job> in a multirun), else the file or folder name."""
    from tinyllm.artifacts import BEST_DIR
    from tinyllm.runs import CHECKPOINT_DIR

    if path is None:
        return "tinyllm"
    path = Path(path)
    if path.name == BEST_DIR:
        run = path.parent
    elif path.parent.name == CHECKPOINT_DIR:  # <run>/checkpoints/last.ckpt
        run = path.parent.parent
    else:
        return path.stem or "tinyllm"
    if run.parent.parent.name == "multiruns":  # multiruns/<time>/<job>/best
        return f"{run.parent.name}-{run.name}"
    return run.name or "tinyllm"


def main(argv: list[str] | None = None) -> int:
    # uvicorn shuts down on Ctrl-C or SIGTERM (`kill`), then re-raises the signal to the handler
    # it found: Ctrl-C's KeyboardInterrupt, and SIGTERM made one, so both stop alike (exit 0);
    # before serving (imports, loading the model) either one is a line and 130, no traceback
    interrupted = RememberedCtrlC(signal.SIGINT, signal.SIGTERM)
    try:
        # the parser imports the app: a second, in which a library may swallow the interruption
        return _serve(build_parser().parse_args(argv), interrupted)
    except KeyboardInterrupt:
        print("tinyllm-serve: interrupted before serving", file=sys.stderr)
        return 130


def _serve(args: argparse.Namespace, interrupted: RememberedCtrlC) -> int:
    try:
        import uvicorn

        from tinyllm.serve.app import ServeConfig, create_app
    except ImportError as e:
        print(f"tinyllm-serve: error: {e.name} is missing: pip install -e \".[serve]\"",
              file=sys.stderr)  # fmt: skip
        return 2
    import torch

    from tinyllm.artifacts import ArtifactError, load_model
    from tinyllm.console import model_summary

    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1)
    try:
        loaded = load_model(args.model)
    except (ArtifactError, OSError) as e:
        print(f"tinyllm-serve: error: {first_line(e)}", file=sys.stderr)
        return 2
    config = ServeConfig(
        model_id=args.model_name or model_id_of(loaded.path),
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_tokens_cap=args.max_tokens_cap,
        max_prompt_chars=args.max_prompt_chars,
        max_body_bytes=args.max_body_bytes,
        max_n=args.max_n,
    )
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"tinyllm-serve: error: cannot listen on {args.host}:{args.port} ({e.strerror}): "
              "choose another --port or --host", file=sys.stderr)  # fmt: skip
        return 2
    try:  # the batch's KV cache is allocated here
        app = create_app(loaded, config)
    except (RuntimeError, MemoryError) as e:
        text = first_line(e)[:200]
        print(f"tinyllm-serve: error: cannot set up the model for {config.max_batch} requests "
              f"at once ({text}): lower --max-batch", file=sys.stderr)  # fmt: skip
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if interrupted.pressed:  # during the start-up, and lost on its way
        raise KeyboardInterrupt
    print(f"model: {model_summary(loaded)}", flush=True)
    print(f"model id: {config.model_id}" + ("; API key required" if config.api_key else ""))
    print(f"serving at http://{shown}:{port}/  (API: http://{shown}:{port}/v1)", flush=True)
    if not _is_loopback(host) and not config.api_key:
        print("warning: listening beyond this machine without --api-key: anyone who can reach "
              "it can use it", file=sys.stderr)  # fmt: skip
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    server = _graceful_server(
        uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=3)
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    print("tinyllm-serve: stopped", file=sys.stderr)
    return 0


def _graceful_server(config):
    """uvicorn's server, which on Ctrl-C or SIGTERM first ends the requests in progress (a
    stream's last event is an error, a whole response a 503): its graceful shutdown waits for
    connections to close, and a stream left open would be cut off mid-text when it gives up.
    With nothing left to wait for, the shutdown is quick, so a second signal is not needed to
    hurry it: it is let be (uvicorn's forced exit would skip the app's own shutdown and log
    the cancelled lifespan's traceback)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                return
            config.app.state.scheduler.stop()
            super().handle_exit(sig, frame)

    return Server(config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
