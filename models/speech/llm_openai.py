"""The slow path on any OpenAI-compatible chat endpoint (a larger local server or a hosted model).

Such an endpoint cannot be forced to continue a prefix token by token, so it is told what has
already been said and asked for the words that follow (RelayS2S's API mode). The answer is
checked at the seam: words it repeats from the end of the prefix are dropped, and it is joined
with a space, as a continuation that starts a new word.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import httpx

from models.speech.llm import Cancelled, Message, drop_repeated_overlap, words_in

CONTINUE_INSTRUCTION = ('Your spoken reply has already begun with: "{prefix}". Continue it from exactly there: '
                        "write only the words that come next, without repeating any of it.")


class OpenAIResponder:
    """The slow path's model behind an endpoint. It keeps nothing between calls (the endpoint
    reads the whole prompt each time), so it is its own session for every conversation."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0,
                 client: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout_s)

    def session(self) -> OpenAIResponder:
        return self

    def prefill(self, messages: Sequence[Message], open_end: bool = False, max_new: int | None = None) -> bool:
        return True  # nothing to read ahead: the endpoint reads the prompt when asked

    def close(self) -> None:
        pass  # the HTTP client is shared by every conversation

    def respond(self, messages: Sequence[Message], prefix: str, max_tokens: int,
                cancelled: Cancelled | None = None) -> Iterator[str]:
        request = list(messages)
        if prefix:
            request.append({"role": "system", "content": CONTINUE_INSTRUCTION.format(prefix=prefix)})
        body = {"model": self.model, "messages": request, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        held = ""  # the start of the answer, held until it can be checked against the prefix
        checked = not prefix
        with self._client.stream("POST", self.url, json=body, headers=self._headers) as response:
            response.raise_for_status()
            for piece in _deltas(response.iter_lines()):
                if cancelled and cancelled():
                    return
                if checked:
                    yield piece
                    continue
                held += piece
                if words_in(held) > words_in(prefix):
                    checked = True
                    yield _as_continuation(drop_repeated_overlap(prefix, held))
        if not checked and held:
            yield _as_continuation(drop_repeated_overlap(prefix, held))


def _deltas(lines: Iterator[str]) -> Iterator[str]:
    """Content pieces of a server-sent-events chat completion stream."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        choices = json.loads(data).get("choices") or [{}]
        content = (choices[0].get("delta") or {}).get("content")
        if content:
            yield content


def _as_continuation(text: str) -> str:
    """A new message starts a new word: a leading space unless it starts with punctuation."""
    text = text.lstrip()
    return text if not text or not text[0].isalnum() else " " + text
