"""The style model's word-level tokenizer and the prompts it is trained on.

A word vocabulary (lower-cased, split on spaces and punctuation) makes "Pencil sketch of a
cat" and "pencil sketch" share their style words; words outside it become one unknown token,
which training teaches the text encoder to ignore. The tokenizer is saved with the weights
(tokenizer/tokenizer.json) and loads with `AutoTokenizer`, so nothing here runs at serve time.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from models.training.styles import STYLES

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unknown|>"
MAX_LENGTH = 16

SUBJECTS = ["cat", "dog", "person", "face", "man", "woman", "portrait", "city", "street", "room", "landscape",
            "tree", "house", "car", "cup", "coffee", "flower", "me", "selfie", "scene"]
FILLERS = ["a", "an", "the", "of", "in", "as", "style", "with", "and", "image", "picture", "art", "drawing",
           "painting", "camera", "beautiful", "detailed", "bright", "dark", "colorful", "high", "quality"]
TEMPLATES = ["{style}", "{style}", "a {style}", "{style} of a {subject}", "a {subject} in {style} style",
             "{subject}, {style}", "{style}, {filler}", "{style} style", "the {subject} as {style}",
             "{filler} {style} {subject}"]
# Words the tokenizer does not know, so training sees unknown tokens around the style words.
UNKNOWN_WORDS = ["zorblat", "qwixel", "murnap", "vexlo", "trindle"]


def vocabulary() -> list[str]:
    words = {w for _, prompts in STYLES.values() for p in prompts for w in _split(p)}
    words |= set(SUBJECTS) | set(FILLERS)
    return [BOS, EOS, UNK] + sorted(words)


def _split(text: str) -> list[str]:
    return [word for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())]


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0, 1, 2 are start, end (also padding, as in CLIP) and unknown; words follow."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=UNK, model_max_length=MAX_LENGTH
    )


def random_prompt(rng: np.random.Generator, style: str) -> str:
    """A prompt naming `style`, sometimes inside a sentence and in any letter case."""
    names = STYLES[style][1]
    name = names[int(rng.integers(len(names)))]
    if name == "":
        return ""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    subjects = SUBJECTS + UNKNOWN_WORDS
    text = template.format(style=name, subject=subjects[int(rng.integers(len(subjects)))],
                           filler=FILLERS[int(rng.integers(len(FILLERS)))])
    if rng.random() < 0.2:
        text = text.upper() if rng.random() < 0.5 else text.title()
    return text
