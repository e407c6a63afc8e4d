"""The chat console: its command parser (property-tested), the session in-process, and chat.py
driven as a user would, in a real pseudo-terminal (pexpect), from a script and from a pipe."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pexpect
import pytest
import torch
from conftest import ROOT, run_chat
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.artifacts import LoadedModel, load_model
from tinyllm.console import (
    COMMANDS,
    ChatConsole,
    Command,
    CommandError,
    decode_escapes,
    is_command,
    main,
    parse_command,
)
from tinyllm.generation import SamplingSettings, generate_text
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer

CHAT = str(ROOT / "chat.py")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]")

# --- the command parser -----------------------------------------------------------------------

GOOD = [
    ("/help", Command("help")),
    ("  /HELP  ", Command("help")),
    ("/?", Command("help")),
    ("/temp 0.5", Command("temp", 0.5)),
    ("/temperature 0", Command("temp", 0.0)),
    ("/temp 100", Command("temp", 100.0)),
    ("/topk 40", Command("topk", 40)),
    ("/top-k off", Command("topk", 0)),
    ("/topk 0", Command("topk", 0)),
    ("/topp 0.9", Command("topp", 0.9)),
    ("/topp off", Command("topp", 1.0)),
    ("/topp 1", Command("topp", 1.0)),
    ("/max 1", Command("max", 1)),
    ("/max 100000", Command("max", 100_000)),
    ("/max_tokens 20", Command("max", 20)),
    ("/seed 0", Command("seed", 0)),
    ("/seed 9223372036854775807", Command("seed", 2**63 - 1)),
    ("/seed off", Command("seed", None)),
    ("/seed RANDOM", Command("seed", None)),
    (r"/stop \n\n", Command("stop", "\n\n")),
    ("/stop THE END", Command("stop", "THE END")),
    ('/stop " "', Command("stop", " ")),
    ('/stop "off"', Command("stop", "off")),
    (r"/stop a\tb\\c\x41\u00e9", Command("stop", "a\tb\\cAé")),
    ("/stop off", Command("stop", None)),
    ("/settings", Command("settings")),
    ("/reset", Command("reset")),
    ("/load outputs/runs/x", Command("load", "outputs/runs/x")),
    ("/load 'my runs/best'", Command("load", "my runs/best")),
    ("/quit", Command("quit")),
    ("/exit", Command("quit")),
]

BAD = [
    ("/", "no command"),
    ("hello", "commands start with /"),
    ("/nosuch 3", "unknown command /nosuch"),
    ("/temp", "needs a value"),
    ("/temp hot", "'hot' is not a number"),
    ("/temp -0.1", "out of range"),
    ("/temp 100.5", "out of range"),
    ("/temp nan", "not a finite number"),
    ("/temp inf", "not a finite number"),
    ("/temp 1e999", "not a finite number"),
    ("/topk 2.5", "not a whole number"),
    ("/topk -1", "out of range"),
    ("/topk 99999999999999999999999", "out of range"),
    ("/topp 0", "out of range"),
    ("/topp 1.5", "out of range"),
    ("/max 0", "out of range"),
    ("/max 100001", "out of range"),
    ("/max " + "9" * 5000, "too long to be a whole number"),
    ("/seed -1", "out of range"),
    ("/seed 9223372036854775808", "out of range"),
    ("/stop", "needs a value"),
    ('/stop ""', "empty"),
    (r"/stop \q", "unknown escape"),
    ("/stop abc\\", "lone"),
    (r"/stop \x4", "unknown escape"),
    ("/stop " + "x" * 201, "at most 200"),
    ("/load", "needs a value"),
    ("/load ''", "not a path"),
    ("/reset now", "takes no value"),
    ("/quit please", "takes no value"),
]


@pytest.mark.parametrize(("line", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_commands_parse(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize(("line", "message"), BAD, ids=[b[0][:30] for b in BAD])
def test_bad_commands_say_why(line, message):
    with pytest.raises(CommandError, match=re.escape(message)) as error:
        parse_command(line)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_unknown_command_lists_the_commands():
    with pytest.raises(CommandError) as error:
        parse_command("/tmep 0.5")
    assert all(f"/{name}" in str(error.value) for name in COMMANDS)


WORDS = [*COMMANDS, "TEMP", "top-k", "max_tokens", "x", ""]
ODD_ARGUMENTS = ["off", "none", "1e309", "-0", "0x10", "١٢", "\\", '"', "'a'", "\\u12", "\\xZZ",
                 "\x00", "  "]  # fmt: skip
ARGUMENTS = st.one_of(
    st.text(),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(ODD_ARGUMENTS),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.builds("/{} {}".format, st.sampled_from(WORDS), ARGUMENTS)))
def test_the_parser_only_ever_raises_its_own_error(line):
    try:
        command = parse_command(line)
    except CommandError as e:
        assert str(e)
    else:
        assert command.name in COMMANDS


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escapes_round_trip_or_fail_cleanly(text):
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    assert decode_escapes(escaped) == text
    with contextlib.suppress(CommandError):
        decode_escapes(text)  # any text: decoded or refused with a message


def test_is_command():
    assert is_command("/temp 1") and is_command("  /help")
    assert not is_command("ROMEO:") and not is_command("//not a command") and not is_command("")


# --- the session, in-process ------------------------------------------------------------------

CORPUS = "ROMEO:\nthe king and the queen love the night.\n\nJULIET:\nsweet day!\n"


def tiny_loaded(seed: int = 0, path: str = "tiny/best") -> LoadedModel:
    tokenizer = CharacterTokenizer().fit(CORPUS)
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=24, n_layer=1, n_head=2, n_embd=16
    )
    metadata = {"val_loss": 2.5, "step": 7}
    return LoadedModel(Transformer(config).eval(), tokenizer, metadata, Path(path))


def session(**settings_) -> tuple[ChatConsole, io.StringIO]:
    out = io.StringIO()
    chosen = (
        SamplingSettings(max_tokens=10, seed=1) if not settings_ else SamplingSettings(**settings_)
    )
    return ChatConsole(tiny_loaded(), chosen, out=out, interactive=False), out


def test_each_command_changes_its_setting():
    console, out = session()
    steps = [
        ("/temp 0.3", "temperature", 0.3, "temperature set to 0.3"),
        ("/topk 5", "top_k", 5, "top-k set to 5"),
        ("/topp 0.8", "top_p", 0.8, "top-p set to 0.8"),
        ("/max 77", "max_tokens", 77, "max tokens set to 77"),
        ("/seed 12", "seed", 12, "seed set to 12"),
        ("/seed off", "seed", None, "seed set to off"),
        (r"/stop \n\n", "stop", "\n\n", r"stop set to '\n\n'"),
        ("/stop off", "stop", None, "stop set to off"),
    ]
    for line, field, value, message in steps:
        assert console.handle(line) is True
        assert getattr(console.settings, field) == value
        assert message in out.getvalue().splitlines()[-1]
    assert console.handle("/temp 1000") and console.settings.temperature == 0.3
    assert "out of range" in out.getvalue()
    assert console.handle("/quit") is False


def test_help_and_settings_name_the_models_unit():
    """/help says what one token of the loaded model is, as /settings does: a byte model's
    /topk picks among bytes and /max counts bytes, not characters."""
    for tokenizer, unit in ((CharacterTokenizer().fit(CORPUS), "character"),
                            (ByteTokenizer(), "byte")):  # fmt: skip
        config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=24, n_layer=1,
                             n_head=2, n_embd=16)  # fmt: skip
        loaded = LoadedModel(Transformer(config).eval(), tokenizer, {}, Path("tiny/best"))
        out = io.StringIO()
        console = ChatConsole(loaded, SamplingSettings(), out=out, interactive=False)
        assert console.handle("/help") is True
        helped = {line.split()[0]: line for line in out.getvalue().splitlines()[1:]}
        assert helped["/temp"].endswith(f"(0: always the most likely {unit})")
        assert f"the K most likely {unit}s" in helped["/topk"]
        assert f"the most likely {unit}s holding P" in helped["/topp"]
        assert f"at most N new {unit}s per reply" in helped["/max"]
        assert "{unit}" not in out.getvalue()
        if unit == "byte":
            assert "character" not in out.getvalue()
        console.handle("/settings")
        assert f"the model sees the last 24 {unit}s" in out.getvalue()


def test_the_conversation_is_the_context_and_reset_forgets_it():
    console, out = session(max_tokens=8, temperature=0)
    loaded, greedy = console.loaded, console.settings

    def alone(prompt: str) -> str:
        return generate_text(loaded.model, loaded.tokenizer, prompt, greedy)

    first = console.reply("ROMEO:")
    assert first == alone("ROMEO:") and console.conversation == "ROMEO:" + first
    second = console.reply("JULIET:")
    joined = "ROMEO:" + first + ("" if first.endswith("\n") else "\n") + "JULIET:"
    assert second == alone(joined)  # the whole conversation was the context
    assert console.conversation == (joined + second)[-24:]  # no more than the model can see
    console.handle("/reset")
    assert console.conversation == ""
    assert "conversation forgotten" in out.getvalue()
    assert console.reply("JULIET:") == alone("JULIET:")


def test_reset_gives_the_same_reply_with_the_same_seed():
    console, _ = session(max_tokens=15, temperature=1.0, seed=4)
    first = console.reply("ROMEO:")
    console.handle("/reset")
    assert console.reply("ROMEO:") == first
    without_reset = console.reply("ROMEO:")  # now with the conversation as context
    assert console.conversation.endswith(without_reset)


def test_a_lowercased_corpus_gives_a_model_that_reads_capitals_as_small_letters(
    tmp_path, corpus_file
):
    """Trained on `data.lowercase=true` (one step), best/ says so, and the console lowercases
    the prompt as the corpus was, instead of dropping every capital as unknown."""
    from conftest import TINY_OVERRIDES, compose_config

    from tinyllm.training import train

    overrides = [*TINY_OVERRIDES, f"data.path={corpus_file}", "data.lowercase=true", "debug=fdr"]
    train(compose_config(overrides, tmp_path / "run"))
    loaded = load_model(tmp_path / "run")
    assert loaded.lowercase and loaded.tokenizer.unknown_characters("ROMEO") == ["E", "M", "O", "R"]
    out = io.StringIO()
    settings = SamplingSettings(max_tokens=3, seed=0)
    console = ChatConsole(loaded, settings, out=out, interactive=False)
    assert console.reply("ROMEO:") is not None
    assert "dropped" not in out.getvalue() and console.conversation.startswith("romeo:")
    assert not tiny_loaded().lowercase  # a model of a corpus with capitals keeps them


def test_unknown_characters_are_named_and_dropped():
    console, out = session(max_tokens=5, seed=0)
    assert console.reply("ROMEO@é:") is not None
    assert "dropped characters the model does not know: '@', 'é'" in out.getvalue()
    assert console.conversation.startswith("ROMEO:")
    assert console.reply("☃☃") is None
    assert "nothing is left of the prompt" in out.getvalue()


def test_stop_text_is_not_shown_and_replies_end_with_a_newline():
    console, out = session(max_tokens=40, temperature=0)
    full = console.reply("the ")
    console.handle("/reset")
    stop = full[6:9]
    console.handle("/stop " + stop.replace("\\", "\\\\").replace("\n", "\\n"))
    out.truncate(0)
    out.seek(0)
    cut = console.reply("the ")
    assert cut == full[: full.find(stop)]
    assert out.getvalue() == cut + "\n"


def test_load_keeps_the_session_on_failure_and_resets_the_conversation_on_success():
    new = tiny_loaded(seed=1, path="other/best")

    def loader(path):
        if path == "other":
            return new
        return load_model(path)

    out = io.StringIO()
    console = ChatConsole(tiny_loaded(), SamplingSettings(max_tokens=5), out=out, load=loader)
    console.reply("the ")
    console.handle("/load /no/such/model")
    assert "cannot load /no/such/model: model path /no/such/model does not exist" in out.getvalue()
    assert console.loaded.path == Path("tiny/best") and console.conversation
    console.handle("/load other")
    assert console.loaded is new and console.conversation == ""
    assert "loaded other/best (val loss 2.5000, step 7" in out.getvalue()


def test_prompts_starting_with_a_slash():
    console, out = session(max_tokens=3)
    console.handle("//the")  # the prompt "/the"; '/' is not in this vocabulary
    assert console.conversation.startswith("the")
    assert "dropped characters the model does not know: '/'" in out.getvalue()


# --- the command line, in-process -------------------------------------------------------------


def test_without_a_model_the_newest_run_is_used(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--prompt", "ROMEO:"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trained model under outputs/" in err
    for name, age in (("old", 100), ("new", 0), ("older", 200)):
        best = tmp_path / "outputs" / "runs" / name / "best"
        shutil.copytree(trained_run / "best", best)
        stamp = time.time() - age
        os.utime(best / "model.safetensors", (stamp, stamp))
    assert main(["--prompt", "ROMEO:", "-n", "5", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert "model: outputs/runs/new/best (val loss" in captured.err
    assert 1 <= len(captured.out) <= 6 and captured.out.endswith("\n")


def test_checkpoints_load_and_options_apply(trained_run, capsys):
    checkpoint = sorted((trained_run / "checkpoints").glob("*.ckpt"))[0]
    assert main([str(checkpoint), "-p", "KING", "-n", "30", "-t", "0"]) == 0
    greedy = capsys.readouterr().out
    assert len(greedy) in (30, 31) and greedy.endswith("\n")
    # a stop text of several characters ends the reply before it
    stop = greedy[10:13]
    assert main([str(checkpoint), "-p", "KING", "-n", "30", "-t", "0", "--stop", stop]) == 0
    assert capsys.readouterr().out == greedy[: greedy.find(stop)] + "\n"


def test_bad_options_exit_2(trained_run, capsys):
    for option in (["--temperature", "500"], ["--top-p", "0"], ["--max-tokens", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(trained_run), *option])
        assert exit_.value.code == 2
        assert "out of range" in capsys.readouterr().err
    assert main([str(trained_run), "--prompt", "☃"]) == 2
    assert "'☃'" in capsys.readouterr().err


# --- chat.py as a user runs it ----------------------------------------------------------------


def env(tmp_path: Path) -> dict:
    return os.environ | {
        "NO_COLOR": "1",
        "TERM": "xterm",
        "TINYLLM_HISTORY": str(tmp_path / "history"),
        "PYTHONUNBUFFERED": "1",
    }


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def _terminal_sigint() -> None:
    """Ctrl-C as in a terminal: a suite started in the background (`pytest &`) ignores SIGINT,
    its children inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(run: Path, tmp_path: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, [CHAT, str(run), *args], env=env(tmp_path), encoding="utf-8",
        timeout=30, dimensions=(50, 250), cwd=str(tmp_path), preexec_fn=_terminal_sigint,
    )  # fmt: skip
    child.expect_exact("> ")
    return child


def ask(child: pexpect.spawn, line: str) -> str:
    """Send a line; the console's answer (ANSI-free) up to the next prompt."""
    child.sendline(line)
    child.expect(r"\n(\x1b\[[0-9;?]*[a-zA-Z])*> ")
    text = plain(child.before)
    return text.split("\n", 1)[1] if "\n" in text else ""  # drop the echoed line


def settings_shown(child: pexpect.spawn) -> dict[str, str]:
    rows = {}
    for row in ask(child, "/settings").splitlines():
        key, _, value = row.strip().partition("  ")
        rows[key.strip()] = value.strip()
    return rows


def test_interactive_session(trained_run, tmp_path):
    child = spawn(trained_run, tmp_path)
    banner = plain(child.before)
    assert f"model {trained_run / 'best'} (val loss " in banner and ", step " in banner
    assert "/help" in banner

    helped = ask(child, "/help")
    assert all(f"/{name}" in helped for name in COMMANDS)

    changes = [
        ("/temp 0.5", "temperature", "0.5"),
        ("/topk 5", "top-k", "5"),
        ("/topp 0.9", "top-p", "0.9"),
        ("/max 40", "max tokens", "40"),
        ("/seed 7", "seed", "7"),
        (r"/stop \n\n", "stop", r"'\n\n'"),
        ("/stop off", "stop", "off"),
        ("/topk off", "top-k", "0 (off)"),
    ]
    for line, key, value in changes:
        assert "set to" in ask(child, line)
        assert settings_shown(child)[key] == value, line

    for line, message in [
        ("/temp hot", "'hot' is not a number"),
        ("/max 100001", "out of range"),
        ("/seed -3", "out of range"),
        ("/frobnicate", "unknown command /frobnicate; the commands are /help"),
        ("/load /no/such/model", "cannot load /no/such/model"),
    ]:
        assert message in ask(child, line)
    shown = settings_shown(child)
    assert (shown["temperature"], shown["max tokens"], shown["seed"]) == ("0.5", "40", "7")

    # a seeded reply, twice after /reset: the same text; then it becomes the context
    first = ask(child, "ROMEO:")
    assert len(first.strip()) > 5
    assert "conversation forgotten" in ask(child, "/reset")
    assert ask(child, "ROMEO:") == first
    conversation = settings_shown(child)["conversation"]
    assert conversation.split()[0] != "0" and "sees the last 32 characters" in conversation

    # characters the model does not know: named, dropped; nothing left: ask again
    answer = ask(child, "ROMEO€:")
    assert "dropped characters the model does not know: '€'" in answer
    assert "nothing is left" in ask(child, "€€")
    assert ask(child, "") == ""  # an empty line: just the prompt again
    long_prompt = ("the king " * 300)[:2500]
    assert ask(child, "/max 10") and len(ask(child, long_prompt)) >= 5

    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (tmp_path / "history").read_text(encoding="utf-8")
    assert "/temp 0.5" in history  # readline history kept


def test_streaming_and_ctrl_c(trained_run, tmp_path):
    child = spawn(trained_run, tmp_path)
    ask(child, "/max 3000")
    # the reply arrives in many pieces over time, not at once at the end
    child.sendline("ROMEO:")
    chunks: list[tuple[float, str]] = []
    text = ""
    while not re.search(r"\n(\x1b\[[0-9;?]*[a-zA-Z])*> ", text):
        piece = child.read_nonblocking(100_000, timeout=30)
        chunks.append((time.monotonic(), piece))
        text += piece
    assert len(plain(text)) > 3000
    assert len(chunks) >= 5, f"output came in {len(chunks)} pieces"
    assert chunks[-1][0] - chunks[0][0] > 0.05

    # Ctrl-C stops a long reply; the next prompt works
    ask(child, "/max 100000")
    child.sendline("JULIET:")
    child.expect_exact("JULIET:")  # the echo
    child.expect(r"\w{4}")  # then the reply, being generated
    time.sleep(0.3)
    child.sendintr()
    child.expect(r"\[stopped after (\d+) characters\]", timeout=10)
    assert 0 < int(child.match.group(1)) < 100_000
    child.expect_exact("> ")
    ask(child, "/max 20")
    assert len(ask(child, "KING")) >= 10

    # Ctrl-C with text typed drops the line; at an empty prompt it leaves with status 0
    child.send("half a prompt")
    child.expect_exact("half a prompt")  # readline's echo: the console has read the text
    time.sleep(0.5)
    child.sendintr()
    child.expect_exact("> ")
    assert "seed" in ask(child, "/settings")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_prompt_and_pipe_modes(trained_run, tmp_path):
    once = run_chat(str(trained_run), "--prompt", "ROMEO:", "--max-tokens", "60", "--seed", "1",
                    "--temperature", "0.9", "--top-k", "10", "--top-p", "0.95",
                    env=env(tmp_path), timeout=60)  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert once.stderr == ""
    assert len(once.stdout) in (60, 61) and once.stdout.endswith("\n")
    assert "\x1b" not in once.stdout and "> " not in once.stdout

    piped = run_chat(str(trained_run), "-n", "60", "-s", "1", "-t", "0.9", "-k", "10",
                     "--top-p", "0.95", stdin="ROMEO:\n\nROMEO:\nJULI☃ET:\n",
                     env=env(tmp_path), timeout=60)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    # each line continued on its own: the same seed and prompt give the same text as --prompt
    assert piped.stdout.startswith(once.stdout + once.stdout)
    assert "\x1b" not in piped.stdout and "tinyllm chat" not in piped.stdout
    assert "'☃'" in piped.stderr and "Traceback" not in piped.stderr
    assert len(piped.stdout) > len(once.stdout) * 2 + 10


def test_closed_streams_and_a_full_disk_are_one_line(trained_run, monkeypatch, capsys):
    """`chat.py <&-`, `chat.py -p R >&-` and `chat.py -p R >/dev/full`, in process."""
    from tinyllm.console import main

    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of a closed descriptor
    assert main([str(trained_run), "-n", "5"]) == 2
    assert capsys.readouterr().err.startswith("chat.py: error: stdin closed: give the console")
    monkeypatch.undo()
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", None)
        assert main([str(trained_run), "-n", "5", "-p", "R"]) == 2
    assert capsys.readouterr().err.startswith("chat.py: error: stdout closed")
    full = open("/dev/full", "w")  # noqa: SIM115 - closing it flushes into the full disk again
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", full)
        assert main([str(trained_run), "-n", "5", "-p", "R"]) == 1
    with contextlib.suppress(OSError):
        full.close()
    err = capsys.readouterr().err
    assert (
        err.startswith("chat.py: error: cannot write the reply (No space left")
        and err.count("\n") == 1
    )


def test_a_path_without_a_model_exits_2_with_one_line(tmp_path):
    result = run_chat(
        str(tmp_path / "nothing-here"), "--prompt", "a", env=env(tmp_path), timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], result.stderr


def test_ctrl_c_during_a_prompt_reply_ends_the_line_and_says_so(trained_run):
    """`chat.py --prompt`: no session to return to, so Ctrl-C ends the program: one line on
    stderr after a line break (the reply was cut mid-line), exit 130, no traceback."""
    import signal
    import subprocess

    from conftest import ROOT

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "chat.py"), str(trained_run), "--prompt", "ROMEO:",
         "--max-tokens", "100000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal starts it
    )  # fmt: skip
    assert process.stdout.read(50)  # the reply is being written
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stderr.decode().endswith("\nchat.py: interrupted\n") and b"Traceback" not in stderr
