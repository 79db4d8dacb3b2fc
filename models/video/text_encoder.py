"""The prompt encoder of the video presets: umT5's encoder (a tiny one for tiny-video).

Wan conditions on the encoder states of the prompt's real tokens, zero-padded to a fixed length
(512): the padding positions carry zeros, not the encoder's output for pad tokens. Prompts are
few and change rarely, so the encoder can live off the accelerator (umT5-XXL is ~11 GB in bf16)
and visit it only while a prompt is encoded; results are kept per prompt text.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from models.loading import _move

CACHED_PROMPTS = 32


class TextEncoder:
    def __init__(self, model, tokenizer, text_len: int, device: torch.device, dtype: torch.dtype, offload: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self.home = torch.device("cpu") if offload else device
        _move(model, self.home, dtype).eval().requires_grad_(False)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """(1, text_len, dim) states of `text` on the compute device, padding zeroed."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        tokens = self.tokenizer(
            [text], padding="max_length", max_length=self.text_len, truncation=True, add_special_tokens=True, return_tensors="pt"
        )
        if self.offload:
            _move(self.model, self.device, self.dtype)
        try:
            ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            if self.offload:
                _move(self.model, self.home, self.dtype)
        states = (states * mask[..., None]).to(self.dtype)
        self._cache[text] = states
        if len(self._cache) > CACHED_PROMPTS:
            self._cache.popitem(last=False)
        return states
