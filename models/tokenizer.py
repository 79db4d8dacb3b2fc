"""A byte-level tokenizer built in memory, for models that ship no tokenizer files.

The built-in presets use it (no files, no download), and so do real architectures built with
random weights: their speed depends on the sequence length (77), not on which ids fill it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_byte_tokenizer(max_length: int = 77) -> PreTrainedTokenizerFast:
    """Ids 0 and 1 are start and end of text (end doubles as padding, as in CLIP); 2..257 are bytes."""
    vocab = {BOS: 0, EOS: 1}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS, model_max_length=max_length
    )
