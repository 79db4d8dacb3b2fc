"""A local chat model on ONNX Runtime that keeps each conversation's attention cache.

Why this engine (docs/speech.md has the measurements): a conversation's prompt grows every turn,
and reading it again for the draft and again for the answer was most of a turn's time. Here each
session owns a key/value cache, and every call first brings it up to its prompt by keeping the
longest common prefix of what the cache holds and reading only the rest (`_sync`): the history
is read once, in the background; the user's words while they speak; and the slow path finds the
fast path's draft already read. Rewinding is free: the cache is one preallocated buffer per layer
that GroupQueryAttention writes in place, so a position is only a count.

The model is the int8 ONNX export of conversion.py, on one intra-op thread by default: one
thread per model, so the stage on the critical path never shares its core with another model's
threads. Its language-model head computes logits only from the position asked for
(`logits_from`), the last token when reading a prompt.

Decoding is greedy with a repetition penalty on the answer's own tokens (a small model falls into
"The answer is: The answer is: ..." loops, above all after a forced prefix); the draft decodes the
same way, so a kept draft is exactly how the slow path would have started, and reports per token
the unpenalised confidence signals the verifier reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.speech.conversion import LOGITS_FROM, MODEL_FILE
from models.speech.llm import Cancelled, Draft, Message, token_scores, words_in

REPETITION_PENALTY = 1.2
DEFAULT_MAX_TOKENS = 2048   # a session's cache: 46 KB a token for SmolLM2-135M, so at most 94 MB
_OPEN_END = "\u0000open\u0000"  # stands for the rest of a message still being spoken


@dataclass(eq=False)
class KvCache:
    """One session's keys and values: a (1, kv_heads, max_tokens, head_dim) float32 buffer per
    layer and kind, shared by the model's past input and present output (written in place).
    Memory is committed by the OS as positions are written."""

    buffers: list[tuple[object, object]]   # (key, value) OrtValues per layer
    capacity: int


class OnnxChatModel:
    """The weights and the compiled graph, shared by every session."""

    def __init__(self, model_dir: Path, threads: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS):
        import onnxruntime
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._onnx = onnxruntime.InferenceSession(str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self._ort = onnxruntime
        decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
        self.layers, self.kv_heads, self.head_dim = decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]
        self._past_names = (decoder["inputs"]["past_key_names"], decoder["inputs"]["past_value_names"])
        self._present_names = (decoder["outputs"]["present_key_names"], decoder["outputs"]["present_value_names"])
        self.vocab = self._onnx.get_outputs()[0].shape[-1]
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.end_token = int(self._tokenizer.convert_tokens_to_ids(self._tokenizer.eos_token))
        self.max_tokens = max_tokens

    def session(self) -> OnnxChatSession:
        return OnnxChatSession(self)

    # --- prompts ---------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message], prefix: str = "", *, open_end: bool = False, answer: bool = True) -> list[int]:
        """The chat template's tokens: with the assistant turn opened and `prefix` in it (`answer`),
        or the messages alone; `open_end`: the last message is cut after its content (still spoken)."""
        messages = list(messages)
        if open_end:
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + _OPEN_END}
            text = self._tokenizer.apply_chat_template(messages, tokenize=False)
            text = text[:text.rindex(_OPEN_END)]
        else:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=answer, tokenize=False) + (prefix if answer else "")
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- the graph -------------------------------------------------------------------------

    def new_cache(self, capacity: int | None = None) -> KvCache:
        capacity = capacity or self.max_tokens
        shape = (1, self.kv_heads, capacity, self.head_dim)
        new = self._ort.OrtValue.ortvalue_from_numpy
        return KvCache([(new(np.zeros(shape, np.float32)), new(np.zeros(shape, np.float32))) for _ in range(self.layers)], capacity)

    def run(self, cache: KvCache, past: int, ids: Sequence[int], logits_from: int) -> np.ndarray:
        """Read `ids` after the first `past` cached positions; their keys and values go into the
        cache. Returns the logits of positions `logits_from`.. of `ids`, (n, vocab)."""
        if past + len(ids) > cache.capacity:
            raise ValueError(f"the conversation needs {past + len(ids)} tokens, more than the session's {cache.capacity}")
        binding = self._onnx.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, past + len(ids)), np.int64))
        binding.bind_cpu_input(LOGITS_FROM, np.array([logits_from], np.int64))
        for layer, kinds in enumerate(cache.buffers):
            for kind, buffer in enumerate(kinds):
                binding.bind_ortvalue_input(self._past_names[kind] % layer, buffer)
                binding.bind_ortvalue_output(self._present_names[kind] % layer, buffer)
        logits = np.empty((1, len(ids) - logits_from, self.vocab), np.float32)
        binding.bind_ortvalue_output("logits", self._ort.OrtValue.ortvalue_from_numpy(logits))
        self._onnx.run_with_iobinding(binding)
        return logits[0]

    def continuation_logprob(self, messages: Sequence[Message], text: str) -> float:
        """Mean log-probability per token of `text` as the start of the answer (verifier labels)."""
        prompt = self.prompt_ids(messages)
        full = self.prompt_ids(messages, text)
        n = len(full) - len(prompt)
        if n <= 0:
            return 0.0
        logits = self.run(self.new_cache(len(full)), 0, full, len(prompt) - 1)[:n].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        logprobs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        return float(np.mean(logprobs[np.arange(n), full[len(prompt):]]))


class OnnxChatSession:
    """One conversation: its cache, the tokens it holds, and the logits after the last of them.
    Calls come one at a time (the relay runs them on its language-model lane)."""

    def __init__(self, model: OnnxChatModel):
        self._model = model
        self._cache: KvCache | None = None
        self._tokens: list[int] = []
        self._logits: np.ndarray | None = None   # next-token logits after `_tokens`

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    def _sync(self, target: list[int], max_new: int | None = None, need_logits: bool = True) -> int:
        """Bring the cache to `target`: keep the longest common prefix, read the rest (at most
        `max_new` tokens of it). Returns how many tokens were read."""
        if self._cache is None:
            self._cache = self._model.new_cache()
        common = 0
        for held, wanted in zip(self._tokens, target):
            if held != wanted:
                break
            common += 1
        if common == len(target):
            if not need_logits or (common == len(self._tokens) and self._logits is not None):
                return 0
            common -= 1  # the logits after the last token are needed: read it again
        rest = target[common:] if max_new is None else target[common:common + max_new]
        self._tokens = self._tokens[:common]
        self._logits = self._model.run(self._cache, common, rest, len(rest) - 1)[-1]
        self._tokens += rest
        return len(rest)

    def _fitted(self, messages: Sequence[Message], reserve: int) -> list[int]:
        """The prompt's tokens, dropping the oldest exchanges while it leaves fewer than `reserve`
        positions of the cache free (a long conversation, or a long answer coming)."""
        messages = list(messages)
        while True:
            ids = self._model.prompt_ids(messages)
            first = 1 if messages and messages[0]["role"] == "system" else 0
            if len(ids) + reserve <= self._model.max_tokens or len(messages) - first <= 1:
                return ids
            del messages[first]
            while len(messages) - first > 1 and messages[first]["role"] != "user":
                del messages[first]

    def _read(self, token: int) -> None:
        self._logits = self._model.run(self._cache, len(self._tokens), [token], 0)[-1]
        self._tokens.append(token)

    def _choose(self, answer: list[int]) -> int:
        logits = self._logits
        if answer:
            logits = logits.copy()
            seen = np.unique(answer)
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / REPETITION_PENALTY, logits[seen] * REPETITION_PENALTY)
        return int(np.argmax(logits))

    def prefill(self, messages: Sequence[Message], open_end: bool = False, max_new: int | None = None) -> bool:
        target = self._model.prompt_ids(messages, open_end=open_end, answer=False)
        if len(target) + 64 > self._model.max_tokens:
            return True  # too long to read ahead: the call that needs it fits it
        self._sync(target, max_new, need_logits=False)
        return self._tokens[:len(target)] == target

    def draft(self, messages: Sequence[Message], max_words: int, cancelled: Cancelled | None = None) -> Draft:
        """The answer's first `max_words` words: greedy until a word beyond them begins (that token
        is not kept) or the answer ends. The draft stays in the cache for the slow path."""
        started = time.perf_counter()
        read = self._sync(self._fitted(messages, reserve=256))
        ids: list[int] = []
        scores = []
        finished = False
        for _ in range(4 * max_words + 8):
            if cancelled and cancelled():
                break
            token = self._choose(ids)
            if token == self._model.end_token:
                finished = True
                break
            if words_in(self._model.decode([*ids, token])) > max_words:
                break
            scores.append(token_scores(self._logits, token))
            ids.append(token)
            self._read(token)
        return Draft(self._model.decode(ids).strip(), tuple(scores), finished, time.perf_counter() - started, read)

    def respond(self, messages: Sequence[Message], prefix: str, max_tokens: int,
                cancelled: Cancelled | None = None) -> Iterator[str]:
        """Stream the continuation of `prefix` (forced-prefix decoding), piece by piece."""
        forced = self._model.encode(prefix) if prefix else []
        self._sync(self._fitted(messages, reserve=max_tokens + len(forced) + 8) + forced)
        ids: list[int] = []
        emitted = ""
        for _ in range(max_tokens):
            if cancelled and cancelled():
                return
            token = self._choose(forced + ids)
            if token == self._model.end_token:
                return
            ids.append(token)
            text = self._model.decode(ids)
            if not text.endswith("\ufffd") and len(text) > len(emitted):  # else half of a multi-byte character: wait
                yield text[len(emitted):]
                emitted = text
            self._read(token)

    def close(self) -> None:
        self._cache, self._tokens, self._logits = None, [], None
