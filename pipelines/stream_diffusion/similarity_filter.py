"""Stochastic similarity filter: skip the model when the input barely changed.

The skip probability rises linearly from 0 at cosine similarity `threshold` to 1 at identical
frames. Unlike upstream StreamDiffusion it never sleeps on the compute worker: a skipped frame
reuses the last output at once and the worker moves on to other streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SimilarityFilter:
    reference: torch.Tensor | None = None  # last input that was actually processed
    skipped_in_row: int = 0

    def should_skip(
        self, image: torch.Tensor, threshold: float, max_skip: int, generator: torch.Generator, can_skip: bool = True
    ) -> bool:
        """Decide for one preprocessed input; updates the reference only when it is processed.

        `can_skip` is False while there is no previous output to reuse.
        """
        if not can_skip or threshold >= 1.0 or self.reference is None or self.reference.shape != image.shape:
            return self._process(image)
        if self.skipped_in_row >= max_skip:
            return self._process(image)
        similarity = torch.nn.functional.cosine_similarity(
            image.flatten().float(), self.reference.flatten().float(), dim=0
        ).item()
        skip_probability = max(0.0, (similarity - threshold) / (1.0 - threshold))
        if torch.rand((), generator=generator).item() < skip_probability:
            self.skipped_in_row += 1
            return True
        return self._process(image)

    def _process(self, image: torch.Tensor) -> bool:
        self.reference = image
        self.skipped_in_row = 0
        return False

    def reset(self) -> None:
        self.reference = None
        self.skipped_in_row = 0
