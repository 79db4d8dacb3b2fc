"""espeak-ng (GPL-3.0), the fallback voice: one short-lived process per utterance (about 10 ms),
from Debian's `espeak-ng` package."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import wave

import numpy as np

from models.speech.tts import Speech


def espeak_installed() -> bool:
    return shutil.which("espeak-ng") is not None


class EspeakSynthesizer:
    def __init__(self, voice: str = "en-us", words_per_minute: int = 165, name: str = "espeak"):
        self.name = name
        self._voice = voice
        self._wpm = words_per_minute

    def synthesize(self, text: str) -> Speech:
        started = time.perf_counter()
        line = " ".join(text.split())
        if not line:
            return Speech(np.zeros(0, np.float32), 22050, 0.0)
        # "--" ends the options, so a reply that starts with "-" is spoken, not parsed.
        wav_bytes = subprocess.run(["espeak-ng", "--stdout", "-v", self._voice, "-s", str(self._wpm), "--", line],
                                   capture_output=True, check=True, timeout=30).stdout
        with wave.open(io.BytesIO(wav_bytes)) as wav:
            rate = wav.getframerate()
        # Streamed to stdout before the length was known, the header's sizes are placeholders:
        # the samples are simply everything after the 44-byte header.
        audio = np.frombuffer(wav_bytes[44:len(wav_bytes) & ~1], np.int16).astype(np.float32) / 32768.0
        return Speech(audio, rate, time.perf_counter() - started)

    def close(self) -> None:
        pass
