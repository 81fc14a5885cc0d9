"""OpenVINO GenAI: a language model generating text with a KV cache (LLMPipeline), tokenizer included.

A generative package is a directory LLMPipeline reads (stateful IR, openvino-tokenizers' tokenizer and
detokenizer, generation_config.json). The host measures its packages through this same class, so a figure
in a step table is what a device runs. Streaming is token by token: each new token id reaches ``on_token``,
which turns ids into text deltas, applies stop strings and answers whether to go on (cancel, deadline).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DESCRIPTION = {
    "name": "openvino-genai",
    "module": "openvino_genai",
    "extra": "genai",
    "model_format": "openvino-genai-ir",
    "kind": "openvino-genai",
    "entry": "openvino_model.xml",
    "sidecars": (".bin",),
    "cpu": "CPU",
    "static_shape_devices": (),
    "preferred_on": ("x86_64",),
    "impl": __name__,
    "generative": True,
}
FILES = (
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
    "generation_config.json",
)


@dataclass
class Generation:
    """One generation's outcome; ``tokens`` are the new token ids (not the prompt)."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # length | stop (EOS or a stop string) | cancelled | deadline
    prompt_tokens: int = 0
    ttft_ms: float | None = None  # prompt in, first new token out
    decode_tokens_per_s: float | None = None  # the tokens after the first, over the time they took
    token_ms: list[float] = field(default_factory=list)  # time between consecutive tokens


class _Stream:
    """Token ids in, text deltas out: holds back what may be a split UTF-8 character or the start of a stop
    string, and stops at a stop string, a cancel or a deadline."""

    def __init__(
        self,
        gen: Generator,
        stop: list[str],
        on_delta: Callable[[str, list[int]], None],
        cancelled: Callable[[], bool],
        deadline: float | None,
    ) -> None:
        self.gen, self.stop, self.on_delta, self.cancelled, self.deadline = gen, stop, on_delta, cancelled, deadline
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already streamed
        self.pending: list[int] = []  # ids not streamed with a delta yet
        self.times: list[float] = []
        self.reason: str | None = None
        self.hold = max((len(s) for s in stop), default=1) - 1
        # incremental detokenization: the text of ids[prefix:] minus that of ids[prefix:read] is what the new
        # tokens add (decoding a short span around them, not every token so far on every token: that grew with
        # the answer, and was most of the agent's time per token)
        self.decoded = ""
        self.prefix = self.read = 0

    def text(self, *, complete: bool = False) -> str:
        """The text so far; a trailing split UTF-8 character stays undecoded until its next part comes, or until
        the answer is ``complete`` (then it is kept as the decoder renders it)."""
        before = self.gen.decode(self.ids[self.prefix : self.read])
        after = self.gen.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (complete or not after.endswith("\ufffd")):
            self.decoded += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self.decoded

    def on_token(self, ids: list[int]) -> bool:
        """True: go on generating."""
        self.times.append(time.perf_counter())
        self.ids.extend(ids)
        self.pending.extend(ids)
        text = self.text()
        for s in self.stop:
            at = text.find(s, max(self.sent - len(s), 0))
            if at >= 0:
                self._emit(text[:at], final=True)
                self.reason = "stop"
                return False
        self._emit(text[: len(text) - self.hold] if self.hold else text, final=False)
        if self.cancelled():
            self.reason = "cancelled"
            return False
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = "deadline"
            return False
        return True

    def _emit(self, text: str, *, final: bool) -> None:
        if len(text) > self.sent or (final and self.pending):
            delta = text[self.sent :]
            self.sent = max(self.sent, len(text))
            self.on_delta(delta, self.pending)
            self.pending = []

    def flush(self) -> str:
        text = self.text(complete=self.reason is None)  # the whole answer: a split character's tail is kept
        if self.reason != "stop":
            self._emit(text, final=True)
        return text[: self.sent]


class Generator:
    """An LLMPipeline on one device; ``generate`` is serialised (one KV cache, one request at a time)."""

    def __init__(self, directory: Path, device: str, threads: int, config: dict[str, str]) -> None:
        import openvino_genai

        settings: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if device == "CPU":
            settings |= {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        settings |= config
        self._g = openvino_genai
        self.pipe = openvino_genai.LLMPipeline(str(directory), device, **settings)
        self.tokenizer = self.pipe.get_tokenizer()
        self.eos = self.tokenizer.get_eos_token_id()
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages`` ({role, content}), ready for the assistant."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        seed: int = 0,
        ignore_eos: bool = False,
        on_delta: Callable[[str, list[int]], None] = lambda _t, _i: None,
        cancelled: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
    ) -> Generation:
        """Generate after ``prompt_ids``; ``on_delta(text, ids)`` gets the text as it becomes final."""
        import numpy as np
        import openvino as ov

        g = self._g
        config = g.GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        if self.eos is not None and self.eos >= 0:
            config.eos_token_id = self.eos
        if temperature > 0:
            config.do_sample, config.temperature, config.top_p, config.rng_seed = True, temperature, 1.0, seed
        else:
            config.do_sample = False
        stream = _Stream(self, list(stop or []), on_delta, cancelled, deadline)

        class _Streamer(g.StreamerBase):
            def write(self, token: Any) -> Any:
                ids = [int(t) for t in token] if isinstance(token, list) else [int(token)]
                return g.StreamingStatus.RUNNING if stream.on_token(ids) else g.StreamingStatus.STOP

            def end(self) -> None:
                pass

        ids = np.asarray([prompt_ids], dtype=np.int64)
        inputs = g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        with self._lock:
            start = time.perf_counter()
            self.pipe.generate(inputs, config, _Streamer())
        out = Generation(prompt_tokens=len(prompt_ids))
        out.text = stream.flush()
        out.tokens = list(stream.ids)
        times = stream.times
        if times:
            out.ttft_ms = (times[0] - start) * 1e3
            out.token_ms = [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
            if len(times) > 1:
                out.decode_tokens_per_s = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
        if stream.reason is not None:
            out.finish_reason = stream.reason
        elif len(out.tokens) < max_new_tokens:  # the runtime stopped before the limit: an end-of-sequence token
            out.finish_reason = "stop"
        return out


def open_generator(path: Path, device: str, threads: int, config: dict[str, str]) -> Generator:
    """``path`` is the package's entry (openvino_model.xml): LLMPipeline reads its whole directory."""
    import openvino as ov

    if device not in ov.Core().available_devices:
        raise LookupError(f"OpenVINO device {device} is not present (have {ov.Core().available_devices})")
    return Generator(path.parent, device, threads, config)


def open_session(path: Path, device: str, threads: int, config: dict[str, str]) -> tuple[Any, list[str], list[str]]:
    raise TypeError("a generative package has no tensor session: send generate/request, not infer/request")


def io_spec(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from edgekit_agent.runtimes import ov as ov_runtime

    return ov_runtime.io_spec(path)


def devices() -> list[str]:
    from edgekit_agent.runtimes import ov as ov_runtime

    return ov_runtime.devices()
