"""Piper voices in a long-lived `python -m piper` process (GPL-3.0: kept out of the server).

Each line written to the process is one utterance; it answers with a WAV file per line (in a
private folder, on tmpfs when there is one) and logs `Wrote <path>`, which frames the answers
exactly: raw output has no end marker. Starting the process and its voice costs about a second,
so it stays up; a crashed process is started again on the next call.

Piper builds its onnxruntime session with the default thread pool, which on two cores spins a
thread against whatever else runs: two words took 158 ms that way and 67 ms on one thread (quiet
machine). A few lines run before Piper's own `__main__` in its process make every session it
opens use `threads` intra-op threads; nothing of Piper is imported by that code, which only
starts the program as `python -m piper` would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

from models.speech.tts import Speech

_WROTE = re.compile(r"Wrote (.+\.wav)\s*$")
# Run as `python -c _LAUNCH <piper arguments>`: sessions with a fixed thread count, then Piper's program.
_LAUNCH = """
import os, runpy, onnxruntime
threads = int(os.environ["LATENTCAST_PIPER_THREADS"])
class _Options(onnxruntime.SessionOptions):
    def __init__(self):
        super().__init__()
        self.intra_op_num_threads = threads
        self.inter_op_num_threads = 1
onnxruntime.SessionOptions = _Options
runpy.run_module("piper", run_name="__main__", alter_sys=True)
"""


class PiperSynthesizer:
    def __init__(self, voice_onnx: Path, name: str = "piper", timeout_s: float = 30.0, threads: int = 1):
        self.name = name
        self._threads = threads
        self._voice = Path(voice_onnx)
        self._timeout_s = timeout_s
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="latentcast-piper-", dir=shm if shm.is_dir() else None))
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        with self._lock:
            self._start()

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "LATENTCAST_PIPER_THREADS": str(self._threads)}
        self._process = subprocess.Popen(
            [sys.executable, "-u", "-c", _LAUNCH, "-m", str(self._voice), "-d", str(self._dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)

    def synthesize(self, text: str) -> Speech:
        line = " ".join(text.split())
        if not line:
            return Speech(np.zeros(0, np.float32), 22050, 0.0)
        started = time.perf_counter()
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            try:
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
                path = self._wait_for_file()
            except (OSError, TimeoutError):
                self._stop()
                raise
        try:
            with wave.open(str(path)) as wav:
                rate = wav.getframerate()
                audio = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).astype(np.float32) / 32768.0
        finally:
            path.unlink(missing_ok=True)
        return Speech(audio, rate, time.perf_counter() - started)

    def _wait_for_file(self) -> Path:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            if not line:
                raise OSError(f"piper exited (code {self._process.poll()})")
            match = _WROTE.search(line)
            if match:
                return Path(match.group(1))
        raise TimeoutError(f"piper gave no audio within {self._timeout_s:.0f} s")

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.stdin.close()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self._stop()
        shutil.rmtree(self._dir, ignore_errors=True)
