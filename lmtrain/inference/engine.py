"""A batched generation engine: one thread decodes every running request together, one token per step.

Continuous batching in the small: each request owns a row of the model's KV cache, which keeps a
length per row. A request joins the batch as soon as a row is free (its prompt is prefilled by the
model's own forward into that row), and leaves it as soon as it finishes, so a long request never
holds back a short one: every step advances all of them with one forward pass, each row at its own
position. Tokens come from the one sampler (lmtrain.inference.sampling) and text from the one
incremental decoder (lmtrain.inference.decode). Beyond `max_batch_size` running and `max_waiting` queued requests,
`submit` raises `EngineFull` (the server answers 429).

Results come back as `Event`s on a per-request callback (the server forwards them to its event loop):
text pieces already decoded (partial UTF-8 characters held back) and cut at stop strings.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lmtrain.inference.decode import TextStream
from lmtrain.inference.sampling import sample_at
from lmtrain.models.gpt import GPT


class EngineFull(RuntimeError):
    """Raised by submit() when the running batch and the waiting queue are both full."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    stop: Sequence[str] = ()  # stop strings: cut before the first occurrence, which is not returned
    stop_token_ids: frozenset[int] = frozenset()  # tokens that end generation (EOT, end-of-turn)
    seed: int | None = None  # a seeded request samples from its own generator: same output at any load


@dataclass
class Event:
    """A decoded text piece, and on the last event of a request its finish reason ('stop'/'length'/'error')."""
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    n_generated: int = 0
    slot: int = -1

    def cancel(self) -> None:
        """Stop generating for this request (client gone); its slot is freed at the next step."""
        self.cancelled.set()


class Engine:
    """Owns the model and a thread that runs the batched decoding loop."""

    def __init__(self, model: GPT, tokenizer, max_batch_size: int = 16, max_waiting: int = 64) -> None:
        if not isinstance(model, GPT):
            raise TypeError(f"the engine serves GPT models (KV cache); got {type(model).__name__}")
        if max_batch_size < 1 or max_waiting < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_waiting >= 0, got {max_batch_size}, {max_waiting}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.block_size = model.config.block_size
        self.device = model.lm_head.weight.device
        self.cache = model.new_kv_cache(max_batch_size)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []  # running[i] occupies cache slot i
        self.lengths: list[int] = []  # tokens stored in each running slot
        self.last_token: list[int] = []
        self.assemblers: list[TextStream] = []
        self.generators: list[torch.Generator | None] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.paused = False
        self.n_cancelled = 0  # requests dropped mid-generation because their client went away
        self.error: BaseException | None = None
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self.thread.start()

    # ---- API used by the server (any thread) ----

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, on_event: Callable[[Event], None]) -> Request:
        """Queue a request; raises EngineFull beyond the cap and ValueError if it cannot fit the context."""
        if not prompt_ids:
            raise ValueError("the prompt encodes to no tokens")
        if len(prompt_ids) + params.max_tokens > self.block_size:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {self.block_size} tokens")
        req = Request(list(prompt_ids), params, on_event)
        with self.lock:
            if self.error is not None or self.stopping:
                raise RuntimeError(f"engine is not running: {self.error or 'shut down'}")
            if len(self.waiting) + len(self.running) >= self.max_batch_size + self.max_waiting:
                raise EngineFull(f"server busy: {len(self.running)} running and {len(self.waiting)} waiting "
                                 f"requests (cap {self.max_batch_size} + {self.max_waiting}); retry later")
            self.waiting.append(req)
            self.lock.notify()
        return req

    def load(self) -> dict:
        """Running and waiting request counts, and the caps."""
        with self.lock:
            return {"running": len(self.running), "waiting": len(self.waiting),
                    "max_batch_size": self.max_batch_size, "max_waiting": self.max_waiting,
                    "cancelled": self.n_cancelled, "paused": self.paused,
                    "healthy": self.error is None and not self.stopping}

    def pause(self) -> None:
        """Stop stepping after the current step; requests still queue up (to drain a host, or in tests)."""
        with self.lock:
            self.paused = True

    def resume(self) -> None:
        with self.lock:
            self.paused = False
            self.lock.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight end with finish_reason 'error'."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout)

    # ---- the engine thread ----

    def _loop(self) -> None:
        try:
            while True:
                with self.lock:
                    while not self.stopping and (self.paused or (not self.waiting and not self.running)):
                        self.lock.wait()
                    if self.stopping:
                        break
                    admit = []
                    while self.waiting and len(self.running) + len(admit) < self.max_batch_size:
                        admit.append(self.waiting.popleft())
                for req in admit:
                    self._admit(req)
                self._drop_cancelled()
                if self.running:
                    self._step()
        except BaseException as e:  # noqa: BLE001 — recorded, reported to every request, and re-raised
            self.error = e
            raise
        finally:
            with self.lock:
                pending = list(self.running) + list(self.waiting)
                self.waiting.clear()
            reason = f"engine stopped: {self.error!r}" if self.error else "engine shut down"
            for req in pending:
                req.on_event(Event("", "error", req.n_generated, reason))

    def _admit(self, req: Request) -> None:
        if req.cancelled.is_set():
            return
        slot = len(self.running)
        self.cache.lengths[slot] = 0
        ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
        with torch.no_grad():
            logits = self.model(ids, kv_cache=self.cache, row_start=slot)[0][0, -1]
        gen = None
        if req.params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(req.params.seed)  # drawn on self.device
        req.slot = slot
        self.running.append(req)
        self.lengths.append(len(req.prompt_ids))
        self.generators.append(gen)
        self.assemblers.append(TextStream(self.tokenizer, req.params.stop))
        self.last_token.append(-1)
        self._emit([slot], self._sample(logits[None], [slot]))

    def _step(self) -> None:
        B = len(self.running)
        tokens = torch.tensor(self.last_token, dtype=torch.long, device=self.device)[:, None]
        with torch.no_grad():
            logits = self.model(tokens, kv_cache=self.cache)[0][:, -1]  # rows 0..B-1, each at its own position
        for i in range(B):
            self.lengths[i] += 1
        self.steps += 1
        self._emit(list(range(B)), self._sample(logits, list(range(B))))

    def _sample(self, logits: torch.Tensor, slots: list[int]) -> list[int]:
        """Next token per row, all rows at once; a seeded row draws its uniform from its own generator."""
        params = [self.running[s].params for s in slots]
        uniform = torch.rand(len(slots), device=self.device)  # unseeded rows: the global RNG, one call
        for row, slot in enumerate(slots):
            gen = self.generators[slot]
            if gen is not None:  # a generator draws on its own device only
                uniform[row] = torch.rand((), generator=gen, device=gen.device)
        return sample_at(logits, [p.temperature for p in params], [p.top_k for p in params],
                         [p.top_p for p in params], uniform).tolist()

    def _emit(self, slots: list[int], tokens: list[int]) -> None:
        """Deliver each row's new token as text; finish rows that hit a stop or their budget."""
        finished = []
        for slot, tok in zip(slots, tokens):
            req = self.running[slot]
            p = req.params
            if tok in p.stop_token_ids:
                finished.append((slot, Event(self.assemblers[slot].flush(), "stop", req.n_generated)))
                continue
            req.n_generated += 1
            self.last_token[slot] = tok
            text, hit_stop = self.assemblers[slot].push(tok)
            if hit_stop:
                finished.append((slot, Event(text, "stop", req.n_generated)))
            elif req.n_generated >= p.max_tokens:
                finished.append((slot, Event(text + self.assemblers[slot].flush(), "length", req.n_generated)))
            elif text:
                req.on_event(Event(text, None, req.n_generated))
        for slot, event in finished:
            self.running[slot].on_event(event)
        self._release(sorted((s for s, _ in finished), reverse=True))

    def _drop_cancelled(self) -> None:
        gone = [i for i in range(len(self.running) - 1, -1, -1) if self.running[i].cancelled.is_set()]
        self.n_cancelled += len(gone)
        self._release(gone)

    def _release(self, slots_desc: list[int]) -> None:
        """Free slots (given highest first), moving the last running request into each hole."""
        for slot in slots_desc:
            last = len(self.running) - 1
            if slot != last:
                self.cache.move(last, slot)
                for seq in (self.running, self.lengths, self.last_token, self.assemblers, self.generators):
                    seq[slot] = seq[last]
                self.running[slot].slot = slot
            for seq in (self.running, self.lengths, self.last_token, self.assemblers, self.generators):
                seq.pop()


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """True once no request is running or waiting (tests use it to check that slots were freed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = engine.load()
        if load["running"] == 0 and load["waiting"] == 0:
            return True
        time.sleep(0.01)
    return False
