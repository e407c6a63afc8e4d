"""Continuous batching: one thread owns the model and decodes every active request together.

    scheduler = Scheduler(model, tokenizer, max_batch=16); scheduler.start()
    job = scheduler.submit(prompt_ids, settings, events, index)   # from the event loop
    ... events (an asyncio.Queue) receive Piece / End / Failure for that job ...
    scheduler.cancel(job)                                          # leaves at the next step

Requests wait in a queue until a slot of the batch is free; each step of `BatchDecoder` samples
one token for every active request (newcomers are prefilled first), and the text goes through
the request's own `Detokenizer` and `StopFilter` before it is handed to the event loop. A request
leaves the batch when it hits a stop text, reaches its `max_tokens`, or is cancelled (its client
went away); the step after, its slot is free.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from tinyllm.generation import (
    BatchDecoder,
    DecodingRow,
    Detokenizer,
    SamplingSettings,
    StopFilter,
    seeded_generator,
)
from tinyllm.model import Transformer
from tinyllm.tokenizer import CharacterTokenizer

log = logging.getLogger("tinyllm.serve")


@dataclass(frozen=True)
class Piece:
    index: int
    text: str


@dataclass(frozen=True)
class End:
    index: int
    finish_reason: str  # "stop" (a stop text) or "length" (max_tokens)
    characters: int  # characters generated (usage)


@dataclass(frozen=True)
class Failure:
    index: int
    message: str


@dataclass(eq=False)
class Job:
    """One sequence to generate; `index` tells its events apart in a shared queue (`n`, lists of
    prompts)."""

    prompt_ids: list[int]
    settings: SamplingSettings
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    index: int = 0
    cancelled: bool = False
    # owned by the scheduler thread
    row: DecodingRow | None = field(default=None, repr=False)
    text: Detokenizer | None = field(default=None, repr=False)
    stops: StopFilter | None = field(default=None, repr=False)
    characters: int = 0

    def emit(self, event: Piece | End | Failure) -> None:
        _deliver([(self, event)])


def _deliver(outbox: list[tuple[Job, Piece | End | Failure]]) -> None:
    """Hand events to their jobs' queues: one wake-up of each event loop for the lot."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for job, event in outbox:
        by_loop.setdefault(job.loop, []).append((job.events, event))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            for job, _ in outbox:
                job.cancelled = True


def _put_all(items: list[tuple[asyncio.Queue, Piece | End | Failure]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class Scheduler:
    """The decode loop in a background thread; the event loop only submits and cancels."""

    def __init__(
        self, model: Transformer, tokenizer: CharacterTokenizer, max_batch: int = 16
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self._decoder = BatchDecoder(model, max_batch)
        self._waiting: deque[Job] = deque()
        self._active: dict[int, Job] = {}  # id(row) -> job
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and monitoring)

    # --- called from the event loop ---

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tinyllm-decode", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(
        self, prompt_ids: list[int], settings: SamplingSettings, events: asyncio.Queue, index: int
    ) -> Job:
        job = Job(list(prompt_ids), settings, events, asyncio.get_running_loop(), index)
        with self._wake:
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop generating for `job`; its slot is freed before the next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    # --- the decode thread ---

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._running and not self._waiting and not self._active:
                    self._wake.wait()
                if not self._running:
                    break
            try:
                self._admit()
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed step must not end the server
                log.exception("decode step failed; ending the requests in the batch")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        for job in [*self._active.values(), *self._waiting]:
            job.emit(Failure(job.index, "the server is shutting down"))

    def _admit(self) -> None:
        """Move waiting jobs into free slots of the batch."""
        while self._decoder.free:
            with self._wake:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.cancelled:
                continue
            settings = job.settings
            seed = settings.seed if settings.seed is not None else secrets.randbits(63)
            generator = seeded_generator(self.model, seed)
            job.row = self._decoder.add(job.prompt_ids, settings, generator)
            job.text = Detokenizer(self.tokenizer)
            job.stops = StopFilter(settings.stops)
            self._active[id(job.row)] = job

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._active.values() if job.cancelled]:
            self._leave(job)

    def _leave(self, job: Job) -> None:
        self._decoder.remove(job.row)
        del self._active[id(job.row)]

    def _step(self) -> None:
        with torch.inference_mode():
            sampled = self._decoder.step()
        self.steps += 1
        outbox: list[tuple[Job, Piece | End]] = []
        for row, token in sampled:
            job = self._active[id(row)]
            piece = job.stops.push(job.text.push(token))
            finish = None
            if job.stops.stopped:
                finish = "stop"
            elif row.produced >= job.settings.max_tokens:
                finish = "length"
                piece += job.stops.push(job.text.flush())  # a byte model's held-back bytes
                piece += job.stops.flush()
            if piece:
                job.characters += len(piece)
                outbox.append((job, Piece(job.index, piece)))
            if finish:
                outbox.append((job, End(job.index, finish, job.characters)))
                self._leave(job)
        _deliver(outbox)

    def _fail_all(self, message: str) -> None:
        for job in list(self._active.values()):
            job.emit(Failure(job.index, message))
        self._active.clear()
        self._decoder = BatchDecoder(self.model, self.max_batch)
