"""What a prompt means to a model with a small, fixed vocabulary (the embedded style model).

Its word-level tokenizer maps every word it was not trained on to one unknown token, which the
text encoder learned to ignore: "a cyberpunk city at night" reaches the model as "city" alone and
the picture comes back unchanged. These checks say so in words, for the demo and the CLI. A
model with a byte-pair tokenizer (the real presets) knows every word, and nothing is said.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def unknown_words(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[str]:
    """The words of `prompt` that `tokenizer` turns into its unknown token, in order, once each."""
    unknown_id = tokenizer.unk_token_id
    if unknown_id is None or not prompt.strip():
        return []
    encoded = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False, truncation=False)
    words = [prompt[start:end] for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]) if token == unknown_id]
    return list(dict.fromkeys(w for w in words if any(c.isalnum() for c in w)))  # punctuation carries no meaning anyway


def prompt_notes(tokenizer: PreTrainedTokenizerBase, prompt: str, styles: Sequence[str]) -> list[str]:
    """Plain-words warnings about `prompt` for a model that knows only `styles` (empty: it knows any prompt)."""
    if not styles:
        return []
    notes = []
    unknown = unknown_words(tokenizer, prompt)
    if unknown:
        notes.append(f"the style model does not know {', '.join(repr(w) for w in unknown)}: "
                     f"{'that word is' if len(unknown) == 1 else 'those words are'} ignored")
    words = set(prompt.lower().replace(",", " ").split())
    if prompt.strip() and not any(set(style.split()) & words for style in styles):
        notes.append(f"the prompt names none of the styles that work on this model ({', '.join(styles)}): "
                     "expect the picture back nearly unchanged")
    return notes
