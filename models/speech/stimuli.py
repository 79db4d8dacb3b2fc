"""Synthetic user speech for training the verifier, tests and benchmarks.

Speech from one of our voices, padded with room tone and mixed with noise at a chosen SNR:
detectors must never see exact digital silence, or they learn to cheat on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.speech.audio import resample
from models.speech.tts import Synthesizer


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray      # (frames,) float32 at `sample_rate`, noise included
    sample_rate: int
    text: str
    speech_start_s: float  # where the voice starts and ends inside `audio`
    speech_end_s: float


def noise(samples: int, rng: np.random.Generator, level: float, colour: str = "pink") -> np.ndarray:
    """Noise of RMS `level`: white, or pink-ish (white through a one-pole low-pass, like a room)."""
    white = rng.standard_normal(samples)
    if colour == "pink":
        out = np.empty_like(white)
        acc = 0.0
        for i, x in enumerate(white):  # short clips only; a loop keeps it dependency-free
            acc = 0.97 * acc + x
            out[i] = acc
        white = out - out.mean()
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12) * level).astype(np.float32)


def voiced_rms(audio: np.ndarray) -> float:
    """RMS over the loud part only, so that padding does not dilute the SNR."""
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    loud = energy[energy > 0.1 * energy.max()] if energy.size else energy
    return float(np.sqrt(np.mean(loud**2))) if loud.size else 0.0


def speak(voice: Synthesizer, text: str, sample_rate: int = 16000, *, snr_db: float = 30.0, lead_s: float = 0.5,
          tail_s: float = 1.0, seed: int = 0, colour: str = "pink") -> Utterance:
    speech = voice.synthesize(text)
    clean = resample(speech.audio, speech.sample_rate, sample_rate)
    rng = np.random.default_rng(seed)
    lead, tail = int(lead_s * sample_rate), int(tail_s * sample_rate)
    padded = np.concatenate([np.zeros(lead, np.float32), clean, np.zeros(tail, np.float32)])
    level = voiced_rms(clean) / (10 ** (snr_db / 20))
    mixed = padded + noise(padded.size, rng, max(level, 1e-4), colour)
    end = lead + _last_voiced(clean)
    return Utterance(np.clip(mixed, -1, 1).astype(np.float32), sample_rate, text, lead / sample_rate, end / sample_rate)


def _last_voiced(clean: np.ndarray) -> int:
    """Index after the last sample above 2% of the peak: the voice's real end, without the
    synthesizer's own trailing silence."""
    loud = np.flatnonzero(np.abs(clean) > 0.02 * (np.abs(clean).max() + 1e-9))
    return int(loud[-1]) + 1 if loud.size else 0
