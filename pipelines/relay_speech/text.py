"""Words at the seams: cutting an answer into clauses for speech, joining a continuation to the
prefix already spoken, and finding which words of a reply were actually played."""

from __future__ import annotations

import re

_CLAUSE_END = re.compile(r"[.!?;:,](?=\s)|[.!?](?=$)")


def take_clause(pending: str, min_words: int, max_words: int) -> tuple[str, str]:
    """Split off the first clause of `pending` (text still streaming in) that is ready to speak:
    one that ends at a punctuation mark after `min_words` words, or `max_words` whole words.
    Returns (clause, rest); clause is "" when nothing is ready."""
    words = pending.split()
    for match in _CLAUSE_END.finditer(pending):
        if len(pending[: match.end()].split()) >= min_words:
            return pending[: match.end()].strip(), pending[match.end():]
    # A word is whole only once the text after it has begun (a space follows it).
    whole = words[:-1] if pending and not pending[-1].isspace() else words
    if len(whole) >= max_words:
        cut = _end_of_word(pending, max_words)
        return pending[:cut].strip(), pending[cut:]
    return "", pending


def clause_words(index: int, first_words: int) -> tuple[int, int]:
    """(min, max) words of an answer's clause by its place: the first as short as the fast path's
    draft (the voice starts on it at once), the second short enough to be voiced while the first
    plays, then longer ones, which sound more natural and cost less per word."""
    if index == 0:
        return 1, first_words
    return (3, 8) if index == 1 else (4, 14)


def _end_of_word(text: str, n: int) -> int:
    """Index just after the n-th whitespace-separated word."""
    count, inside = 0, False
    for i, ch in enumerate(text):
        if ch.isspace():
            if inside:
                count += 1
                if count == n:
                    return i
            inside = False
        else:
            inside = True
    return len(text)


def seam_join(prefix: str, continuation: str) -> tuple[str, str]:
    """The continuation as it can be spoken after `prefix`: (text to speak, fragment dropped).

    Forced-prefix decoding continues the exact prefix text, so its first piece starts a new word
    (" Paris") or punctuation ("," "."). If it instead extends the prefix's last word ("ian"
    after "Paris"), that word was already spoken whole: the fragment up to the next word is
    dropped rather than spoken as a broken word.
    """
    if not prefix or not continuation or continuation[0].isspace() or not continuation[0].isalnum():
        return continuation, ""
    match = re.match(r"\S*", continuation)
    fragment = match.group(0) if match else ""
    # Punctuation glued to the fragment ("ian,") still belongs at the seam.
    tail = re.sub(r"^[\w'’-]+", "", fragment)
    return tail + continuation[len(fragment):], fragment[: len(fragment) - len(tail)]


def words_played(text: str, fraction: float) -> str:
    """The words of `text` heard when `fraction` of its audio was played: time is shared out
    between words by their length (speech has no per-word timing here), and a word counts as
    heard once most of it was played."""
    words = text.split()
    if fraction >= 1.0 or not words:
        return text.strip() if fraction >= 1.0 else ""
    weights = [len(w) + 1 for w in words]
    total = sum(weights)
    heard, elapsed = [], 0.0
    for word, weight in zip(words, weights):
        if (elapsed + 0.6 * weight) / total > fraction:
            break
        heard.append(word)
        elapsed += weight
    return " ".join(heard)
