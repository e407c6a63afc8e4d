"""Continuous batching: one thread owns the model and decodes every active request together.

    scheduler = Scheduler(model, tokenizer, max_batch=16); scheduler.start()
    job = scheduler.submit(prompt_ids, settings, events, index)   # from the event loop
    ... events (an asyncio.Queue) receive Piece / End / Failure for that job ...
    scheduler.cancel(job)                                          # leaves at the next step

Requests wait in a queue until a slot of the batch is free; each step of `BatchDecoder` samples
one token for every active request (newcomers are prefilled first), and the text goes through
the request's own `Detokenizer` and `StopFilter` before it is handed to the event loop (text that
arrives while the loop is still busy with an earlier step joins that hand-over). A request
leaves the batch when it hits a stop text, reaches its `max_tokens`, or is cancelled (its client
went away); the step after, its slot is free.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tinyllm.generation import (
    BatchDecoder,
    DecodingRow,
    Detokenizer,
    SamplingSettings,
    StopFilter,
)
from tinyllm.model import Transformer
from tinyllm.tokenizer import CharacterTokenizer

log = logging.getLogger("tinyllm.serve")
SHUTTING_DOWN = "the server is shutting down"


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
    status: int = 500  # the HTTP status a whole (not streamed) response gets


@dataclass(eq=False)
class Job:
    """One sequence to generate; `index` tells its events apart in a shared queue (`n`, lists of
    prompts)."""

    prompt_ids: list[int]
    settings: SamplingSettings
    events: asyncio.Queue
    mailbox: _Mailbox  # the way to the event loop that owns `events`
    index: int = 0
    cancelled: bool = False
    # owned by the scheduler thread
    row: DecodingRow | None = field(default=None, repr=False)
    text: Detokenizer | None = field(default=None, repr=False)
    stops: StopFilter | None = field(default=None, repr=False)
    characters: int = 0

    def emit(self, event: Piece | End | Failure) -> None:
        self.mailbox.post([(self, event)])


class _Mailbox:
    """Events on their way from the decode thread to one event loop.

    The loop takes them at most every `interval` seconds (an idle server's first event goes at
    once); what the decoder produces meanwhile joins the pending hand-over, a job's pieces
    merged into one. Many clients then cost one wake-up of the loop and one server-sent event
    per job every few steps, not one per job and step: that per-event work (the loop, the HTTP
    layer, the client's parsing) shares the two cores with the decoder.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[Job, list[Piece | End | Failure]] = {}
        self._last = -math.inf  # time.monotonic() of the last hand-over

    def post(self, outbox: Sequence[tuple[Job, Piece | End | Failure]]) -> None:
        with self._lock:
            wake = not self._pending
            for job, event in outbox:
                events = self._pending.setdefault(job, [])
                last = events[-1] if events else None
                if isinstance(event, Piece) and isinstance(last, Piece):
                    events[-1] = Piece(event.index, last.text + event.text)
                else:
                    events.append(event)
            if not wake:
                return  # the hand-over already scheduled takes these too
            wait = self._last + self.interval - time.monotonic()
            try:
                if wait > 0:
                    self.loop.call_soon_threadsafe(self.loop.call_later, wait, self._hand_over)
                else:
                    self.loop.call_soon_threadsafe(self._hand_over)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                for job in self._pending:
                    job.cancelled = True
                self._pending.clear()

    def _hand_over(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last = time.monotonic()
        for job, events in pending.items():
            for event in events:
                job.events.put_nowait(event)


class Scheduler:
    """The decode loop in a background thread; the event loop only submits and cancels."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: CharacterTokenizer,
        max_batch: int = 16,
        stream_interval: float = 0.02,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.stream_interval = stream_interval  # seconds between hand-overs to an event loop
        self._decoder = BatchDecoder(model, max_batch)
        self._waiting: deque[Job] = deque()
        self._active: dict[int, Job] = {}  # id(row) -> job
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and monitoring)

    # --- called from the event loop ---

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tinyllm-decode", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take no more requests: those in progress or waiting end after the step being decoded,
        with a 503 failure (the server is shutting down), so none is left waiting for uvicorn
        to cancel it. Safe in a signal handler."""
        with self._wake:
            self._running = False
            self._wake.notify()

    def close(self) -> None:
        self.stop()
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
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.setdefault(loop, _Mailbox(loop, self.stream_interval))
        job = Job(list(prompt_ids), settings, events, mailbox, index)
        with self._wake:
            if not self._running:  # stopped: nothing would ever decode it
                job.emit(Failure(index, SHUTTING_DOWN, 503))
                return job
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop generating for `job`: a waiting job leaves the queue now (it no longer counts
        towards the queue's limit), a running one frees its slot before the next step."""
        job.cancelled = True
        with self._wake:
            if job in self._waiting:
                self._waiting.remove(job)
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
            job.emit(Failure(job.index, SHUTTING_DOWN, 503))

    def _admit(self) -> None:
        """Move waiting jobs into free slots of the batch."""
        while self._decoder.free:
            with self._wake:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.cancelled:
                continue
            # a seeded row gets a generator of its own; the others are sampled together
            job.row = self._decoder.add(job.prompt_ids, job.settings)
            job.text = Detokenizer(self.tokenizer)
            job.stops = StopFilter(job.settings.stops)
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
                piece += job.stops.flush()
            if piece:
                job.characters += len(piece)
                outbox.append((job, Piece(job.index, piece)))
            if finish:
                outbox.append((job, End(job.index, finish, job.characters)))
                self._leave(job)
        self._post(outbox)

    @staticmethod
    def _post(outbox: list[tuple[Job, Piece | End]]) -> None:
        """One post per event loop for the step's events (a server has one loop)."""
        by_mailbox: dict[_Mailbox, list[tuple[Job, Piece | End]]] = {}
        for job, event in outbox:
            by_mailbox.setdefault(job.mailbox, []).append((job, event))
        for mailbox, events in by_mailbox.items():
            mailbox.post(events)

    def _fail_all(self, message: str) -> None:
        for job in list(self._active.values()):
            job.emit(Failure(job.index, message))
        self._active.clear()
        self._decoder = BatchDecoder(self.model, self.max_batch)
