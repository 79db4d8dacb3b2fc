"""Parameters of one spoken conversation. All are `hot`: they apply from the next audio tick
(a turn already being answered finishes with the values it started with)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SYSTEM_PROMPT = ("You are a helpful assistant who talks with people by voice. "
                         "Reply in English with one or two short, plain sentences.")
OUTPUT_RATES = (16000, 22050, 24000, 44100, 48000)


def _hot(**kw):
    return Field(json_schema_extra={"update": "hot"}, **kw)


class RelaySpeechParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["relay", "cascaded"] = _hot(
        default="relay", description="relay: the answer's first words are drafted (and voiced) from the first pause, spoken "
        "at the turn decision when the verifier keeps them, and the slow path continues them; cascaded: ASR then LLM then TTS "
        "from the turn decision only (the baseline).")
    system_prompt: str = _hot(default=DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=4000)
    voice: str | None = _hot(default=None, max_length=64, description="A voice from the pipeline's list (`voices` in its "
                             "stats); unset: the default (Piper joe when installed, else espeak-ng).")
    verifier_threshold: float = _hot(default=0.5, ge=0.0, le=1.0, description="Keep the draft when the verifier's "
                                     "P(keep) reaches this; 0 keeps every draft, 1 discards almost all.")
    draft_words: int = _hot(default=2, ge=1, le=12, description="Words of the first spoken chunk: the fast path's draft "
                            "(and the first clause in cascaded mode). Fewer words reach the voice sooner.")
    speculate: bool = _hot(default=True, description="Draft (and voice the draft) from the first pause, before the turn "
                           "decision; nothing of it is heard or remembered unless the turn really ends.")
    vad_threshold: float = _hot(default=0.5, gt=0.0, lt=1.0, description="Speech probability that counts as voice.")
    min_speech_s: float = _hot(default=0.1, ge=0.03, le=1.0, description="Voice this long starts a user turn (and barges in).")
    pause_s: float = _hot(default=0.064, ge=0.03, le=2.0, description="Silence after which the fast path starts and the turn "
                          "model is asked whether the turn is complete.")
    end_of_turn_s: float = _hot(default=0.3, ge=0.1, le=3.0, description="Silence that ends the user's turn once the turn "
                                "model is sure it is complete (twice this once it thinks so; the whole hangover when no turn "
                                "model is installed).")
    incomplete_end_of_turn_s: float = _hot(default=1.2, ge=0.1, le=5.0, description="Silence that ends the turn whatever the "
                                           "turn model says (it heard an unfinished sentence).")
    turn_threshold: float = _hot(default=0.9, ge=0.5, le=1.0, description="P(turn complete) from the turn model that lets the "
                                 "short hangover end the turn (0.5 lets twice the hangover end it).")
    max_utterance_s: float = _hot(default=15.0, ge=1.0, le=30.0, description="A longer turn is ended here and answered.")
    partial_interval_s: float = _hot(default=0.8, ge=0.2, le=30.0, description="A streaming partial transcript every so "
                                     "often while the user speaks (relay mode): the language model reads the words ahead, and "
                                     "the verifier reads how stable they were.")
    barge_in: bool = _hot(default=True, description="User speech during the answer stops it.")
    max_answer_tokens: int = _hot(default=60, ge=4, le=512)
    max_context_turns: int = _hot(default=8, ge=0, le=64, description="Exchanges of the conversation kept for the LLM.")
    output_sample_rate: int = _hot(default=24000, description=f"Rate of the spoken answer: one of {', '.join(map(str, OUTPUT_RATES))}.")
    output_lead_s: float = _hot(default=0.1, ge=0.02, le=1.0, description="How far ahead of real time answer audio is sent "
                                "(the client's jitter margin; barge-in can stop no faster than this).")

    @model_validator(mode="after")
    def _check(self) -> RelaySpeechParams:
        if self.output_sample_rate not in OUTPUT_RATES:
            raise ValueError(f"output_sample_rate must be one of {', '.join(map(str, OUTPUT_RATES))}")
        if self.pause_s >= self.end_of_turn_s:
            raise ValueError(f"pause_s ({self.pause_s}) must be shorter than end_of_turn_s ({self.end_of_turn_s})")
        if self.incomplete_end_of_turn_s < self.end_of_turn_s:
            raise ValueError(f"incomplete_end_of_turn_s ({self.incomplete_end_of_turn_s}) must not be shorter than end_of_turn_s "
                             f"({self.end_of_turn_s})")
        return self
