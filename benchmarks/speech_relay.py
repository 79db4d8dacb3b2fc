"""Spoken turns against the real server: relay vs cascaded-only, in the same run.

    python -m benchmarks.speech_relay --turns 30

`latentcast serve --pipelines relay-speech` runs in a subprocess. Two sessions talk to it over
the WebSocket API, one in `relay` mode and one `cascaded` (ASR, then LLM, then TTS, all started
at the turn decision); their turns alternate, so both see the same load on this shared machine.
A simulated user (the `Talker`) speaks each question (Piper's voice, 30 dB SNR room noise) in
real-time 20 ms chunks, keeps sending room noise while it listens, and stamps every answer chunk
as it arrives. The questions include three with a comma, where a short hangover alone could
cut the speaker off.

Per turn, on the client's clock (the same machine's monotonic clock as the server's):
- speech end -> first audio: from sending the last voiced sample of the question to the arrival
  of the first answer audio after it (pipecat's user-to-bot latency; LiveKit's e2e latency);
- where that time went, from the server's turn record: speech end -> first pause (the fast path
  starts) and -> turn decision, the transcript, the turn model, the draft or first token, the
  first voice;
- false cut-offs: turns the server decided before the question's last voiced sample was sent;
- correct answers: for the factual questions, whether the reply says what is true ("Paris");
plus the draft keep rate, the seam gap, the relay − cascade difference on each paired turn (the
same question at the same point of both conversations), and the machine's load through the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, progress
from models.speech.stimuli import noise
from streaming.client import StreamClient

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
CHUNK_S = 0.02

QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "Tell me a joke about cats.",
    "What should I cook for dinner tonight?", "Why is the sky blue?", "Who wrote Hamlet?",
    "How do I boil an egg?", "What is the weather usually like in London?", "Can you recommend a good book?",
    "What does a baker do all day?", "Is it healthy to drink coffee every day?", "How far is the moon from the earth?",
    "What time do banks usually open?", "What is seven plus five?", "How do I learn to swim?",
    # A pause at a comma is where a short hangover alone cuts people off: the turn model must wait.
    "I was wondering, could you tell me a story?", "If I leave at nine, when do I get to Paris?",
    "My favourite colours are red, green and blue.",
]
# What a right answer says (any of these words), for the questions that have one.
FACTS = {
    "What is the capital of France?": ("paris",), "How many legs does a spider have?": ("eight", "8"),
    "Why is the sky blue?": ("scatter", "rayleigh"), "Who wrote Hamlet?": ("shakespeare",),
    "What does a baker do all day?": ("bread", "bake"), "How far is the moon from the earth?": ("384", "238", "239"),
    "What is seven plus five?": ("twelve", "12"),
}


def correct(question: str, reply: str | None) -> bool | None:
    """Whether the reply says what is true (None: the question has no single right answer)."""
    words = FACTS.get(question)
    if words is None:
        return None
    return any(w in (reply or "").lower() for w in words)


@dataclass
class Said:
    started_at: float       # when its first sample was sent
    voiced_end_at: float    # when its last voiced sample was sent


@dataclass
class Talker:
    """A simulated user on one WebSocket session: talks in real time, never goes silent (room
    noise between utterances, as a microphone would send), and listens."""

    client: StreamClient
    noise_rms: float = 0.003
    seed: int = 0
    heard: list[tuple[float, np.ndarray]] = field(default_factory=list)   # (arrival, int16 mono at answer rate)
    answer_rate: int | None = None
    _next_send: float | None = None
    _chunk_id: int = 0
    _listener: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    async def __aenter__(self) -> Talker:
        self._listener = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc) -> None:
        self._listener.cancel()

    async def _listen(self) -> None:
        while True:
            received = await self.client.audio.get()
            self.answer_rate = received.sample_rate
            self.heard.append((time.monotonic(), received.samples[:, 0].copy()))

    async def send(self, audio: np.ndarray) -> float:
        """Send 16 kHz float audio at real-time pace, continuing the stream's clock; returns when
        its last chunk left."""
        step = int(CHUNK_S * RATE)
        sent = time.monotonic()
        for i in range(0, audio.size, step):
            now = time.monotonic()
            if self._next_send is None or self._next_send < now - 0.2:
                self._next_send = now  # first chunk, or we fell far behind: restart the clock
            if self._next_send > now:
                await asyncio.sleep(self._next_send - now)
            piece = np.clip(audio[i:i + step] * 32767, -32768, 32767).astype(np.int16)
            await self.client.send_audio(piece[:, None], RATE, chunk_id=self._chunk_id)
            sent = time.monotonic()
            self._chunk_id += 1
            self._next_send += piece.size / RATE
        return sent

    async def say(self, audio: np.ndarray, speech_end_s: float) -> Said:
        """Speak a clip whose voice ends `speech_end_s` into it."""
        started = time.monotonic()
        end = int(speech_end_s * RATE)
        voiced_end = await self.send(audio[:end])
        await self.send(audio[end:])
        return Said(started, voiced_end)

    async def room(self, seconds: float) -> None:
        await self.send(noise(int(seconds * RATE), self._rng, self.noise_rms, "white"))

    async def room_until(self, done, timeout: float) -> bool:
        """Room noise, a quarter second at a time, until `await done()` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.room(0.25)
            if await done():
                return True
        return False

    def heard_since(self, t: float) -> tuple[np.ndarray, list[float]]:
        """Answer audio that arrived after `t`, joined, and the arrival time of each chunk."""
        parts = [(at, a) for at, a in self.heard if at >= t]
        return (np.concatenate([a for _, a in parts]) if parts else np.zeros(0, np.int16)), [at for at, _ in parts]


async def speech_stats(client: StreamClient) -> dict:
    return (await client.stats()).get("speech") or {}


async def one_turn(talker: Talker, clip, timeout: float = 120.0) -> dict:
    """Ask one question and wait for the whole answer to it; returns the client's timings, the
    server's record of the turn that answered the question's end, and the turns the server
    decided before the question was over (false cut-offs)."""
    client = talker.client
    before = (await speech_stats(client)).get("turns", 0)
    said = await talker.say(clip.audio, clip.speech_end_s)

    def answered(stats: dict) -> dict | None:
        """The finished turn whose speech ran to the question's end (a cut-off turn ends earlier)."""
        new = (stats.get("last_turns") or [])[-max(0, stats.get("turns", 0) - before):] if stats.get("turns", 0) > before else []
        return next((t for t in reversed(new) if t["speech_end_at"] is not None and t["speech_end_at"] >= said.voiced_end_at - 0.3), None)

    async def finished() -> bool:
        return answered(await speech_stats(client)) is not None

    done = await talker.room_until(finished, timeout)
    stats = await speech_stats(client)
    record = answered(stats) or {}
    new = (stats.get("last_turns") or [])[-max(0, stats.get("turns", 0) - before):] if stats.get("turns", 0) > before else []
    cut_offs = [t for t in new if t["decision_at"] is not None and t["decision_at"] < said.voiced_end_at]
    _, arrivals = talker.heard_since(said.voiced_end_at)
    first = arrivals[0] if arrivals else None
    return {"done": done, "said": said, "record": record, "cut_offs": len(cut_offs),
            "speech_end_to_first_audio": None if first is None else first - said.voiced_end_at}


STAGES = ("speech_end_to_pause", "asr_wait", "asr", "turn_model", "llm_draft", "llm_first_token", "tts_first", "speech_end_to_fast_done",
          "speech_end_to_decision", "decision_to_first_audio")


def _stages(record: dict) -> str:
    """Where a turn's time went, in ms."""
    timed = ", ".join(f"{n} {record[n] * 1000:.0f}" for n in STAGES if record.get(n) is not None)
    return f"{timed}, read {record.get('draft_read_tokens')} tokens, P(complete) {record.get('turn_probability')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--pipelines", "relay-speech", "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log_path.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited; see {log_path}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.kill()
    raise TimeoutError("the server did not become ready")


def percentiles(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    p50, p90 = np.percentile(np.asarray(values) * 1000, [50, 90])
    return f"{p50:.0f} / {p90:.0f}"


def load_1min() -> float:
    return os.getloadavg()[0]


async def run(url: str, turns: int, seed: int, params: dict) -> tuple[dict[str, list[dict]], list[float]]:
    from models.speech.bundle import load_voices
    from models.speech.config import SpeechConfig
    from models.speech.stimuli import speak

    voices = load_voices(SpeechConfig())
    user_voice = voices.get("joe") or voices["espeak"]
    clips = [speak(user_voice, q, RATE, snr_db=30, lead_s=0.3, tail_s=0.0, seed=i) for i, q in enumerate(QUESTIONS)]
    for synthesizer in voices.values():
        synthesizer.close()
    results: dict[str, list[dict]] = {"relay": [], "cascaded": []}
    loads = [load_1min()]
    clients = {mode: await StreamClient.connect(url) for mode in results}
    try:
        for mode, client in clients.items():
            await client.start("relay-speech", {**params, "mode": mode})
        talkers = {mode: Talker(client, seed=seed + i) for i, (mode, client) in enumerate(clients.items())}
        for talker in talkers.values():
            await talker.__aenter__()
        for index in range(turns):
            for mode, talker in talkers.items():
                progress(f"turn {index + 1}/{turns}, {mode}")
                clip = clips[(index + seed) % len(clips)]
                turn = await one_turn(talker, clip)
                turn["question"], turn["correct"] = clip.text, correct(clip.text, turn["record"].get("reply"))
                results[mode].append(turn)
                loads.append(load_1min())
                r = turn["record"]
                first = turn["speech_end_to_first_audio"]
                print(f"{mode:8s} {index + 1:3d}  {clip.text!r:48s} -> {r.get('final_transcript')!r}: {r.get('reply')!r} "
                      f"kept={r.get('kept')} correct={turn['correct']} cut-offs={turn['cut_offs']} "
                      f"first audio {first if first is None else round(first * 1000)} ms ({_stages(r)}) load {loads[-1]:.2f}", flush=True)
                await talker.room(0.5)
    finally:
        for client in clients.values():
            await client.close()
    return results, loads


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| mode | turns answered | speech end → first audio p50 / p90 ms | speech end → pause p50 ms | transcript p50 ms "
             "| turn model p50 ms | draft / first clause p50 ms | first voice p50 ms | speech end → fast path ready p50 ms "
             "| speech end → decision p50 / p90 ms | decision → first audio p50 / p90 ms | keep rate | seam gap p50 / p90 ms "
             "| false cut-offs | correct answers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, turns in results.items():
        records = [t["record"] for t in turns if t["done"]]
        drafted = [r for r in records if r.get("kept") is not None]
        keep = f"{sum(bool(r['kept']) for r in drafted) / len(drafted):.2f}" if drafted else "–"
        checked = [t["correct"] for t in turns if t["correct"] is not None]

        def p50(name: str) -> str:
            values = [r[name] for r in records if r.get(name) is not None]
            return f"{np.median(values) * 1000:.0f}" if values else "–"

        first_words = p50("llm_draft") if mode == "relay" else p50("llm_first_token")
        lines.append(f"| {mode} | {len(records)}/{len(turns)} | {percentiles([t['speech_end_to_first_audio'] for t in turns])} "
                     f"| {p50('speech_end_to_pause')} | {p50('asr')} | {p50('turn_model')} | {first_words} | {p50('tts_first')} "
                     f"| {p50('speech_end_to_fast_done')} | {percentiles([r.get('speech_end_to_decision') for r in records])} "
                     f"| {percentiles([r.get('decision_to_first_audio') for r in records])} | {keep} "
                     f"| {percentiles([r.get('seam_gap') for r in records])} | {sum(t['cut_offs'] for t in turns)} "
                     f"| {sum(checked)}/{len(checked)} |")
    return "\n".join(lines)


def paired(results: dict[str, list[dict]]) -> str:
    """Relay − cascade on each turn: the same question at the same point of both conversations."""
    pairs = [(r["speech_end_to_first_audio"], c["speech_end_to_first_audio"], r["record"].get("kept"))
             for r, c in zip(results["relay"], results["cascaded"])
             if r["speech_end_to_first_audio"] is not None and c["speech_end_to_first_audio"] is not None]
    lines = ["| relay turns | pairs | relay ahead | relay p50 ms | cascaded p50 ms | median of the differences ms | largest difference ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, keep in (("all", None), ("draft kept", True), ("draft discarded", False)):
        chosen = [(r, c) for r, c, k in pairs if keep is None or k is keep]
        if not chosen:
            continue
        relay, cascaded = np.array(chosen).T * 1000
        diff = relay - cascaded
        lines.append(f"| {name} | {len(chosen)} | {int(np.sum(diff < 0))} | {np.median(relay):.0f} | {np.median(cascaded):.0f} "
                     f"| {np.median(diff):+.0f} | {np.max(diff):+.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=30, help="turns per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="talk to a running server instead of starting one")
    parser.add_argument("--params", type=json.loads, default={}, help='more session parameters, as JSON: \'{"end_of_turn_s": 0.4}\'')
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        log = ROOT / "out" / "speech_relay_server.log"
        log.parent.mkdir(exist_ok=True)
        server, url = start_server(log)
    try:
        started = time.monotonic()
        results, loads = asyncio.run(run(url, args.turns, args.seed, args.params))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print(f"\n{machine()}; 1-minute load average through the run: min {min(loads):.2f}, median {np.median(loads):.2f}, "
          f"max {max(loads):.2f}; {time.monotonic() - started:.0f} s\n")
    print(table(results))
    print()
    print(paired(results))


if __name__ == "__main__":
    main()
