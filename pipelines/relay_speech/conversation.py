"""One session's conversation as the LLM sees it: what the user said and what was actually
heard of the answers, bounded to the last few exchanges."""

from __future__ import annotations

from collections import deque

from models.speech.llm import Message

_MAX_MESSAGE_CHARS = 2000  # a runaway transcript must not crowd out everything else


class Conversation:
    def __init__(self, max_turns: int):
        self._messages: deque[Message] = deque()
        self.max_turns = max_turns

    def add(self, role: str, text: str) -> None:
        text = text.strip()[:_MAX_MESSAGE_CHARS]
        if not text:
            return
        if self._messages and self._messages[-1]["role"] == role:
            # Two user utterances in a row (the first answer was interrupted before a word was
            # heard): one message, as the user meant it.
            self._messages[-1] = {"role": role, "content": self._messages[-1]["content"] + " " + text}
        else:
            self._messages.append({"role": role, "content": text})
        self._trim()

    def _trim(self) -> None:
        while sum(m["role"] == "user" for m in self._messages) > max(self.max_turns, 1):
            self._messages.popleft()
            while self._messages and self._messages[0]["role"] != "user":
                self._messages.popleft()

    def messages(self, system_prompt: str, user_text: str | None = None) -> list[Message]:
        """The prompt: system, the history, then `user_text` (a turn not yet committed)."""
        history = list(self._messages) if self.max_turns else []
        out = [{"role": "system", "content": system_prompt}, *history]
        if user_text is not None:
            out.append({"role": "user", "content": user_text.strip()[:_MAX_MESSAGE_CHARS]})
        return out

    @property
    def history(self) -> list[Message]:
        return list(self._messages)
