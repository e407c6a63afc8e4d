"""Batched decoding (`BatchDecoder`, `Transformer.decode`): every row, whatever else is in the
batch and whenever it joined, gets exactly the tokens `Transformer.stream` gives it alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tinyllm.generation import (
    BatchDecoder,
    Detokenizer,
    SamplingSettings,
    SettingsError,
    StopFilter,
)
from tinyllm.model import ModelConfig, Transformer
from tinyllm.serve.scheduler import End, Job, Piece, _Mailbox

VARIANTS = [
    pytest.param({}, id="learned"),
    pytest.param({"positional": "sinusoidal"}, id="sinusoidal"),
    pytest.param({"positional": "rotary", "context_length": 9}, id="rotary-odd-context"),
]


def build(**overrides) -> Transformer:
    config = {"vocab_size": 19, "context_length": 12, "n_layer": 2, "n_head": 2, "n_embd": 16}
    torch.manual_seed(0)
    return Transformer(ModelConfig(**(config | overrides))).eval()


def alone(model: Transformer, prompt: list[int], settings: SamplingSettings, steps: int):
    generator = torch.Generator().manual_seed(settings.seed)
    return list(
        model.stream(prompt, steps, settings.temperature, settings.top_k or None,
                     settings.top_p, generator=generator)
    )  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_joining_and_leaving_get_the_tokens_they_get_alone(variant):
    model = build(**variant)
    steps = 3 * model.config.context_length  # every row's window slides several times
    requests = [  # (step it joins at, prompt, settings)
        (0, [1, 2, 3], SamplingSettings(temperature=1.0, seed=1)),
        (0, [4] * 20, SamplingSettings(temperature=0.7, top_k=5, seed=2)),  # longer than context
        (3, [5], SamplingSettings(temperature=1.3, top_p=0.8, seed=3)),
        (7, [6, 7], SamplingSettings(temperature=0.0, seed=4)),
        (8, [8, 9, 1], SamplingSettings(temperature=2.0, top_k=3, top_p=0.9, seed=5)),
    ]
    lengths = [steps, steps // 2, steps, 5, steps - 4]  # rows leave at different times
    decoder = BatchDecoder(model, slots=4)
    got: dict[int, list[int]] = {}
    rows = {}
    waiting = list(enumerate(requests))
    step = 0
    while waiting or decoder.rows:
        for index, (start, prompt, settings) in list(waiting):
            if start <= step and decoder.free:
                rows[index] = decoder.add(prompt, settings)
                got[index] = []
                waiting.remove((index, (start, prompt, settings)))
        for row, token in decoder.step():
            index = next(i for i, r in rows.items() if r is row)
            got[index].append(token)
            if len(got[index]) == lengths[index]:
                decoder.remove(row)
        step += 1
    for index, (_, prompt, settings) in enumerate(requests):
        assert got[index] == alone(model, prompt, settings, lengths[index]), index


def test_a_full_batch_refuses_and_removing_twice_is_harmless():
    decoder = BatchDecoder(build(), slots=1)
    row = decoder.add([1], SamplingSettings(seed=0))
    with pytest.raises(RuntimeError, match="full"):
        decoder.add([2], SamplingSettings())
    decoder.remove(row)
    decoder.remove(row)
    assert decoder.free == 1 and decoder.step() == []


def test_stop_filter_with_several_stop_texts_holds_back_possible_starts():
    stops = StopFilter(["END", "\n\n"])
    shown = [stops.push(c) for c in "ab\nc E"]
    assert "".join(shown) == "ab\nc " and not stops.stopped  # "E" is held back
    assert stops.push("N") == "" and stops.push("D") == "" and stops.stopped
    assert StopFilter(["xy"]).push("axyb") == "a"


def test_settings_accept_a_list_of_stops_and_name_the_bad_field():
    assert SamplingSettings(stop=["a", "b"]).stops == ("a", "b")
    assert SamplingSettings(stop="a").stops == ("a",) and SamplingSettings().stops == ()
    with pytest.raises(SettingsError) as error:
        SamplingSettings(stop=["a", ""])
    assert error.value.field == "stop"
    with pytest.raises(SettingsError) as error:
        SamplingSettings(max_tokens=50).within(max_tokens=10)
    assert error.value.field == "max_tokens" and "at most 10" in str(error.value)


def test_detokenizer_is_the_tokenizer_one_id_at_a_time():
    from tinyllm.tokenizer import CharacterTokenizer

    tokenizer = CharacterTokenizer().fit("abc")
    text = Detokenizer(tokenizer)
    assert [text.push(i) for i in tokenizer.encode("cab")] == ["c", "a", "b"]


def test_pieces_posted_while_the_loop_is_busy_arrive_as_one():
    """Steps that finish before the event loop takes the last hand-over join it: the client
    gets one longer piece instead of one event per step."""

    async def main() -> list:
        mailbox = _Mailbox(asyncio.get_running_loop(), interval=0.0)
        events: asyncio.Queue = asyncio.Queue()
        job = Job([1], SamplingSettings(), events, mailbox)
        for text in "abc":  # the loop runs nothing until the sleep below
            mailbox.post([(job, Piece(0, text))])
        mailbox.post([(job, End(0, "length", 3))])
        await asyncio.sleep(0)
        first = [events.get_nowait() for _ in range(events.qsize())]
        mailbox.post([(job, Piece(0, "d"))])
        await asyncio.sleep(0)
        return [*first, events.get_nowait()]

    assert asyncio.run(main()) == [Piece(0, "abc"), End(0, "length", 3), Piece(0, "d")]


def test_hand_overs_come_at_most_every_interval():
    async def main() -> tuple[float, list]:
        mailbox = _Mailbox(asyncio.get_running_loop(), interval=0.2)
        events: asyncio.Queue = asyncio.Queue()
        job = Job([1], SamplingSettings(), events, mailbox)
        mailbox.post([(job, Piece(0, "a"))])  # the first goes at once
        first = await events.get()
        mailbox.post([(job, Piece(0, "b"))])
        started = asyncio.get_running_loop().time()
        second = await events.get()
        return asyncio.get_running_loop().time() - started, [first, second]

    waited, got = asyncio.run(main())
    assert got == [Piece(0, "a"), Piece(0, "b")] and 0.1 < waited < 1.0
