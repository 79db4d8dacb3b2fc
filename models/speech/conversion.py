"""Language models into ONNX with a key/value cache, once, kept in the cache folder.

The relay keeps each conversation's attention state between turns (llm_local.py), which needs a
model whose cache is an input and an output: onnxruntime-genai's model builder writes exactly
that (int8 MatMulNBits weights, GroupQueryAttention reading and writing one shared cache
buffer), and onnxruntime, already here for the VAD, runs it. A GGUF file (as packages ship them)
is first dequantised by transformers into an ordinary checkpoint; a transformers folder (a larger
model someone has locally) goes to the builder directly.

One edit follows the build: the language-model head reads the hidden states from a position the
caller gives (`logits_from`), so reading a prompt computes the vocabulary's logits for its last
token only instead of every token (a 49k-word head is a fifth of a 400-token prompt's time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")
MODEL_FILE = "model.onnx"
LOGITS_FROM = "logits_from"   # the extra input: first position whose logits are computed
_FORMAT = "onnx-int8-v1"       # bump when the output of this module changes


def converted_model(source: Path, cache_root: Path, precision: str = "int8") -> Path:
    """The ONNX folder for `source` (a .gguf file or a transformers folder), converting it the
    first time. Concurrent callers are safe: each converts into a temporary folder and the first
    rename wins."""
    source = Path(source)
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{precision}|{_FORMAT}".encode()).hexdigest()[:16]
    target = cache_root / "onnx" / f"{source.stem}-{precision}-{key}"
    if (target / MODEL_FILE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The first start pays for this (about 1.5 min for SmolLM2-135M on two cores): say so, and how far it got.
    started = time.monotonic()
    steps = 3 if source.suffix == ".gguf" else 2
    log.warning("first start: converting the language model %s to ONNX (%s), once, into %s; this takes a minute or two "
                "(later starts load it in seconds)", source.name, precision, target)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        checkpoint = Path(work) / "checkpoint"
        if source.suffix == ".gguf":
            log.warning("conversion 1/%d: reading the GGUF weights into a checkpoint", steps)
            _gguf_to_checkpoint(source, checkpoint)
        else:
            checkpoint = source
        staged = Path(work) / "onnx"
        log.warning("conversion %d/%d: building the ONNX model (onnxruntime-genai's builder; the longest step) after %.0f s",
                    steps - 1, steps, time.monotonic() - started)
        _build(checkpoint, staged, Path(work) / "builder-cache", precision)
        log.warning("conversion %d/%d: the head reads from a given position, after %.0f s", steps, steps, time.monotonic() - started)
        _head_reads_from(staged / MODEL_FILE)
        for name in _TOKENIZER_FILES:
            if (checkpoint / name).exists() and not (staged / name).exists():
                shutil.copy(checkpoint / name, staged / name)
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / MODEL_FILE).exists():
                raise
    log.warning("converted the language model in %.0f s; kept in %s", time.monotonic() - started, target)
    return target


def _build(checkpoint: Path, out: Path, cache: Path, precision: str) -> None:
    """onnxruntime-genai's builder, as the program it is (it puts its own folder on sys.path)."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out), "-p", precision,
               "-e", "cpu", "-c", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (out / MODEL_FILE).exists():
        raise RuntimeError(f"the ONNX model builder failed ({done.returncode}): {done.stderr[-2000:]}")


def _head_reads_from(model_path: Path) -> None:
    """Insert Slice(hidden, logits_from:) before the language-model head (whose output is `logits`)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    head = next(node for node in graph.node if "logits" in node.output)
    graph.input.append(helper.make_tensor_value_info(LOGITS_FROM, TensorProto.INT64, [1]))
    graph.initializer.extend([helper.make_tensor("logits_to", TensorProto.INT64, [1], [2**62]),
                              helper.make_tensor("logits_axis", TensorProto.INT64, [1], [1])])
    sliced = helper.make_node("Slice", [head.input[0], LOGITS_FROM, "logits_to", "logits_axis"], ["hidden_for_logits"],
                              name="logits_from_slice")
    graph.node.insert(list(graph.node).index(head), sliced)
    head.input[0] = "hidden_for_logits"
    onnx.save(model, str(model_path))  # the weights stay in their external data file, untouched


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
    config["architectures"] = [type(model).__name__]  # the builder picks its exporter by this
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
