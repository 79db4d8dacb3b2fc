"""A local chat model on CTranslate2: drafts with per-token scores, and forced-prefix answers.

The prompt is the model's own chat template with the assistant turn opened; a forced prefix is
appended to it as text, so the model continues exactly the words already spoken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from models.speech.llm import Cancelled, Draft, Message, token_scores, words_in

# Greedy decoding of a small model falls into loops ("The answer is: The answer is: ..."), above
# all after a forced prefix; penalising tokens it has generated ends them. The draft keeps plain
# greedy scores: they are the verifier's evidence.
REPETITION_PENALTY = 1.2


class LocalChatModel:
    def __init__(self, model_dir: Path, threads: int = 2, device: str = "cpu", compute_type: str = "int8"):
        import ctranslate2
        from transformers import AutoTokenizer

        self._generator = ctranslate2.Generator(str(model_dir), device=device, compute_type=compute_type,
                                                intra_threads=threads, inter_threads=1)
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._end_token = self._tokenizer.eos_token
        self._lock = threading.Lock()  # one generation at a time: they share the CPU threads anyway

    # --- prompts ---------------------------------------------------------------------------

    def prompt(self, messages: Sequence[Message], prefix: str = "") -> str:
        return self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False) + prefix

    def _split_prompt(self, messages: Sequence[Message], prefix: str = "") -> tuple[list[str] | None, list[str]]:
        """(the system prompt's tokens, the rest): CTranslate2 keeps the model state after a
        static prompt, so a session's turns do not pay for their system prompt again."""
        tokens = self._tokens(self.prompt(messages, prefix))
        if not messages or messages[0]["role"] != "system":
            return None, tokens
        static = self._tokens(self._tokenizer.apply_chat_template([messages[0]], tokenize=False))
        if len(static) >= len(tokens) or tokens[:len(static)] != static:
            return None, tokens
        return static, tokens[len(static):]

    def _tokens(self, text: str) -> list[str]:
        return self._tokenizer.convert_ids_to_tokens(self._tokenizer.encode(text, add_special_tokens=False))

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- fast path -------------------------------------------------------------------------

    def draft(self, messages: Sequence[Message], max_words: int, cancelled: Cancelled | None = None) -> Draft:
        """Greedy until a word beyond `max_words` begins (that token is not kept) or the answer ends."""
        started = time.perf_counter()
        ids: list[int] = []
        over = False  # the last token began a word past the limit

        def on_token(step) -> bool:
            nonlocal over
            ids.append(step.token_id)
            over = words_in(self._decode(ids)) > max_words
            return over or bool(cancelled and cancelled())

        max_length = 4 * max_words + 8
        static, rest = self._split_prompt(messages)
        with self._lock:
            result = self._generator.generate_batch(
                [rest], static_prompt=static, max_length=max_length, include_prompt_in_result=False,
                return_logits_vocab=True, end_token=self._end_token, callback=on_token)[0]
        kept = ids[:-1] if over else ids
        logits = result.logits[0] if result.logits else []
        scores = tuple(token_scores(np.asarray(logits[i]).reshape(-1), token) for i, token in enumerate(kept) if i < len(logits))
        finished = not over and len(ids) < max_length and not (cancelled and cancelled())
        return Draft(self._decode(kept).strip(), scores, finished, time.perf_counter() - started)

    # --- slow path -------------------------------------------------------------------------

    def respond(self, messages: Sequence[Message], prefix: str, max_tokens: int,
                cancelled: Cancelled | None = None) -> Iterator[str]:
        """Stream the continuation of `prefix` (forced-prefix decoding), piece by piece."""
        static, rest = self._split_prompt(messages, prefix)
        ids: list[int] = []
        emitted = ""
        with self._lock:
            steps = self._generator.generate_tokens(rest, static_prompt=static, max_length=max_tokens, end_token=self._end_token,
                                                    sampling_topk=1, repetition_penalty=REPETITION_PENALTY)
            try:
                for step in steps:
                    if cancelled and cancelled():
                        return
                    ids.append(step.token_id)
                    text = self._decode(ids)
                    if text.endswith("\ufffd"):
                        continue  # half of a multi-byte character: wait for the rest
                    if len(text) > len(emitted):
                        yield text[len(emitted):]
                        emitted = text
            finally:
                steps.close()

    def continuation_logprob(self, messages: Sequence[Message], text: str) -> float:
        """Mean log-probability per token of `text` as the start of the answer (verifier labels)."""
        prompt = self._tokens(self.prompt(messages))
        full = self._tokens(self.prompt(messages, text))
        n = len(full) - len(prompt)
        if n <= 0:
            return 0.0
        with self._lock:
            result = self._generator.score_batch([full])[0]
        return float(np.mean(result.log_probs[-n:]))

