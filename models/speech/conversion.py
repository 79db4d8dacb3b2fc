"""Language models into CTranslate2's format, once, kept in the cache folder.

CTranslate2 runs the int8 model several times faster than transformers on a CPU and is already
here for Whisper. A GGUF file (as packages ship them) is first dequantised by transformers into
an ordinary checkpoint; a transformers folder (a larger model someone has locally) converts
directly. The result holds the CTranslate2 model plus the tokenizer and its chat template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")


def converted_model(source: Path, cache_root: Path, quantization: str = "int8") -> Path:
    """The CTranslate2 folder for `source` (a .gguf file or a transformers folder), converting it
    the first time. Concurrent callers are safe: each converts into a temporary folder and the
    first rename wins."""
    source = Path(source)
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{quantization}".encode()).hexdigest()[:16]
    target = cache_root / "ct2" / f"{source.stem}-{quantization}-{key}"
    if (target / "model.bin").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to CTranslate2 (%s) in %s; this happens once", source, quantization, target)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        checkpoint = Path(work) / "checkpoint"
        if source.suffix == ".gguf":
            _gguf_to_checkpoint(source, checkpoint)
        else:
            checkpoint = source
        staged = Path(work) / "ct2"
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(checkpoint)).convert(str(staged), quantization=quantization)
        for name in _TOKENIZER_FILES:
            if (checkpoint / name).exists():
                shutil.copy(checkpoint / name, staged / name)
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / "model.bin").exists():
                raise
    return target


def _gguf_to_checkpoint(gguf: Path, out: Path) -> None:
    """A transformers checkpoint (fp32 safetensors, config, tokenizer) from a GGUF file."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
