"""``generate/request`` → ``generate/response``: text generation streamed in order, with limits and cancel.

A request: ``{"id", "prompt" | "messages": [{role, content}], "max_new_tokens", "temperature", "stop": [...],
"seed"}``; ``{"id", "cancel": true}`` cancels the request with that id, queued or running. Every answer
carries the request's ``id`` and a ``seq`` counting from 0: text deltas ``{"text", "tokens"}``, then one
final message ``{"done": true, "finish_reason", "prompt_tokens", "completion_tokens", "ttft_ms",
"tokens_per_s"}``, or ``{"done": true, "error"}``. One generation runs at a time (one KV cache); a bounded
queue holds the next ones and refuses past it, so a flood costs a device its queue, never its memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent.protocol import ProtocolError, loads


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 64 << 10
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    queue: int = 4
    max_seconds: float = 300.0  # one generation's wall-clock bound (finish_reason "deadline")
    max_stop: int = 8


@dataclass
class GenRequest:
    id: str
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_new_tokens: int
    temperature: float
    stop: list[str]
    seed: int
    cancel: threading.Event = field(default_factory=threading.Event)


def _id(request: dict[str, Any]) -> str:
    rid = request.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        raise ProtocolError("'id' must be a string of 1-128 characters")
    return rid


def parse(request: dict[str, Any], limits: Limits) -> GenRequest:
    """A checked generation request; ProtocolError names the first problem (the id is read first)."""
    rid = _id(request)
    unknown = set(request) - {"id", "prompt", "messages", "max_new_tokens", "temperature", "stop", "seed"}
    if unknown:
        raise ProtocolError(f"unknown field(s) {sorted(unknown)}")
    prompt, messages = request.get("prompt"), request.get("messages")
    if (prompt is None) == (messages is None):
        raise ProtocolError("give exactly one of 'prompt' (a string) or 'messages' (a list of {role, content})")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise ProtocolError("'prompt' must be a non-empty string")
    if messages is not None:
        if not isinstance(messages, list) or not messages or len(messages) > 64:
            raise ProtocolError("'messages' must be a list of 1-64 {role, content} objects")
        for i, m in enumerate(messages):
            if not (
                isinstance(m, dict)
                and set(m) == {"role", "content"}
                and m["role"] in ("system", "user", "assistant")
                and isinstance(m["content"], str)
            ):
                raise ProtocolError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}")
    max_new = request.get("max_new_tokens", 128)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= limits.max_new_tokens:
        raise ProtocolError(
            f"'max_new_tokens' must be an integer in [1, {limits.max_new_tokens}] (this device's limit)"
        )
    temperature = request.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise ProtocolError("'temperature' must be a number in [0, 2] (0: greedy)")
    stop = request.get("stop", [])
    if (
        not isinstance(stop, list)
        or len(stop) > limits.max_stop
        or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop)
    ):
        raise ProtocolError(f"'stop' must be a list of at most {limits.max_stop} strings of 1-64 characters")
    seed = request.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ProtocolError("'seed' must be an integer in [0, 2**32)")
    return GenRequest(rid, prompt, messages, max_new, float(temperature), stop, seed)


class GenerateService:
    """The agent's generation worker. ``publish(answer)`` sends one response message (in order, QoS 1);
    ``model()`` is the serving model (or None); ``record(tokens, ttft_ms, tokens_per_s)`` feeds telemetry."""

    def __init__(
        self,
        model: Callable[[], Any],
        publish: Callable[[dict[str, Any]], None],
        record: Callable[[int, float | None, float | None], None],
        *,
        limits: Limits | None = None,
        loading: Callable[[], bool] = lambda: False,
    ) -> None:
        self.model, self.publish, self.record, self.loading = model, publish, record, loading
        self.limits = limits or Limits()
        self.q: queue.Queue[GenRequest] = queue.Queue(maxsize=self.limits.queue)
        self.active: dict[str, GenRequest] = {}  # queued or running, by id
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def _answer(self, rid: str | None, seq: int, body: dict[str, Any]) -> None:
        self.publish({"id": rid, "seq": seq, **body})

    def _error(self, rid: str | None, message: str) -> None:
        self._answer(rid, 0, {"done": True, "error": message})

    def submit(self, payload: bytes) -> None:
        """Called from the network thread: parse, queue or answer at once; never blocks, never raises."""
        try:
            request = loads(payload, max_bytes=self.limits.max_request_bytes)
        except ProtocolError as exc:
            self._error(None, f"bad request: {exc}")
            return
        try:
            if request.get("cancel") is not None:
                self._cancel(request)
                return
            req = parse(request, self.limits)
        except ProtocolError as exc:
            rid = request.get("id") if isinstance(request.get("id"), str) else None
            self._error(rid, f"bad request: {exc}")
            return
        with self._lock:
            if req.id in self.active:
                self._error(req.id, f"bad request: a generation with id {req.id!r} is already queued or running")
                return
            try:
                self.q.put_nowait(req)
            except queue.Full:
                self._error(req.id, f"busy: {self.limits.queue} generations are queued; retry later")
                return
            self.active[req.id] = req

    def _cancel(self, request: dict[str, Any]) -> None:
        rid = _id(request)
        if request.get("cancel") is not True or set(request) != {"id", "cancel"}:
            raise ProtocolError("a cancel is exactly {id, cancel: true}")
        with self._lock:
            req = self.active.get(rid)
        if req is None:
            self._error(rid, f"cancel: no generation with id {rid!r} is queued or running")
            return
        req.cancel.set()  # a queued one is answered when the worker reaches it; a running one stops at its next token

    def run(self, stopping: threading.Event) -> None:
        """The worker loop (one thread); ``stopping`` also cuts a running generation short at its next token."""
        self._stopping = stopping
        while not stopping.is_set():
            try:
                req = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._generate(req)
            except Exception as exc:  # the runtime failed on this request: answer, keep serving
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                self._error(req.id, f"generation failed: {first}")
                self.record(0, None, None)
            finally:
                with self._lock:
                    self.active.pop(req.id, None)

    def _generate(self, req: GenRequest) -> None:
        model = self.model()
        if req.cancel.is_set():
            self._answer(
                req.id, 0, {"done": True, "finish_reason": "cancelled", "prompt_tokens": 0, "completion_tokens": 0}
            )
            return
        if model is None:
            self._error(
                req.id,
                "busy: loading the installed model; ask again in a moment"
                if self.loading()
                else "no model is installed yet",
            )
            return
        if not getattr(model, "generative", False):
            m = model.manifest
            self._error(
                req.id,
                f"the installed package {m.name}@{m.version} ({model.engine}) does not generate "
                "text; send infer/request, or deploy a language-model package",
            )
            return
        gen = model.generator
        text = req.prompt if req.prompt is not None else gen.chat_prompt(req.messages)
        ids = gen.encode(text)
        if len(ids) > self.limits.max_prompt_tokens:
            self._error(
                req.id,
                f"bad request: the prompt is {len(ids)} tokens; this device takes at most "
                f"{self.limits.max_prompt_tokens}",
            )
            return
        seq = 0

        def on_delta(delta: str, tokens: list[int]) -> None:
            nonlocal seq
            self._answer(req.id, seq, {"text": delta, "tokens": tokens})
            seq += 1

        deadline = time.monotonic() + self.limits.max_seconds
        out = gen.generate(
            ids,
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            stop=req.stop,
            seed=req.seed,
            on_delta=on_delta,
            cancelled=lambda: req.cancel.is_set() or self._stopping.is_set(),
            deadline=deadline,
        )
        self.record(len(out.tokens), out.ttft_ms, out.decode_tokens_per_s)
        m = model.manifest
        self._answer(
            req.id,
            seq,
            {
                "done": True,
                "finish_reason": out.finish_reason,
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": len(out.tokens),
                "ttft_ms": None if out.ttft_ms is None else round(out.ttft_ms, 3),
                "tokens_per_s": None if out.decode_tokens_per_s is None else round(out.decode_tokens_per_s, 3),
                "model": {"name": m.name, "version": m.version, "runtime": f"{model.engine}:{model.device}"},
            },
        )
