"""One spoken conversation: turn-taking, the relay of a fast draft into the slow path, barge-in.

The compute worker calls `feed` with the audio that arrived and `advance` for the audio due
out, every tick; both are quick (voice activity and bookkeeping). Model work runs as jobs on the
pipeline's thread pool: the fast path reports back through its future, the slow path through
typed events in the answer's outbox (events.py), and `advance` reads both, so this object's state
is only ever touched by the worker thread.

A turn, in time order (in relay mode; the cascaded baseline has no partials and no fast path):
1. The user speaks; a streaming partial transcript is made every `partial_interval_s`.
2. Pause (`pause_s` of silence), when `speculate` is on: the fast path starts, speculatively: a
   greedy transcript, a draft of a few words, the verifier's verdict, and the kept draft's audio.
   Until the turn is decided none of it is heard or remembered; if the user goes on speaking it
   is cancelled.
3. Turn decision (`end_of_turn_s` of silence, or `max_utterance_s` of speech): the fast path
   starts now if no pause started it, and the slow path waits for it, then runs: a beam-search
   transcript, then the LLM, forced to continue from the kept prefix (or answering from scratch
   when the verifier discarded the draft), clause by clause into speech. The kept prefix plays the
   moment it is ready; its continuation plays right after it.
4. The answer plays out in real time. User speech during it (barge-in) stops it at once, cancels
   the jobs, and only the words that were played enter the conversation; with `barge_in` off the
   user's voice is ignored until the answer ends.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from models.speech.asr import Transcript
from models.speech.audio import ASR_RATE, StreamResampler, mono_float, resample, to_int16
from models.speech.bundle import SpeechModels
from models.speech.llm import Draft, Message
from models.speech.tts import Speech, Synthesizer
from models.speech.vad import VoiceActivity
from models.speech.verifier import DraftEvidence
from pipelines.relay_speech.conversation import Conversation
from pipelines.relay_speech.events import (
    ContinuationAudio,
    ContinuationText,
    FinalTranscript,
    FirstToken,
    LlmFinished,
    SeamFragment,
    SlowPathDone,
    SlowPathEvent,
    SlowPathFailed,
    UserTurn,
)
from pipelines.relay_speech.metrics import TurnRecord, TurnStats
from pipelines.relay_speech.params import RelaySpeechParams
from pipelines.relay_speech.playout import Playout, Segment
from pipelines.relay_speech.text import seam_join, take_clause, words_played
from pipelines.relay_speech.turn_detector import WINDOW_S, Detection, TurnDetector, TurnEvent
from streaming.frames import AudioChunk

WINDOW = 512
PREROLL_S = 0.3         # audio kept before the detected start of speech (its onset)
TAIL_S = 0.25           # silence kept after the last voiced window in the final transcript's audio
MIN_PARTIAL_S = 0.6     # no partial transcript of less speech than this
FIRST_CLAUSE_WORDS = (2, 6)   # the first spoken clause: ends at punctuation after 2 words, or at 6
CLAUSE_WORDS = (4, 14)


@dataclass
class FastResult:
    """What the fast path produced for one utterance."""

    transcript: Transcript
    draft: Draft | None = None
    probability: float | None = None
    keep: bool = False
    audio: np.ndarray | None = None   # the kept draft, voiced, at the output rate
    tts_s: float | None = None


@dataclass(eq=False)
class Speculation:
    future: Future
    cancel: threading.Event
    started_at: float = 0.0


@dataclass(eq=False)
class Listening:
    """The user's turn being captured."""

    start_sample: int
    onset_at: float
    partials: list[str] = field(default_factory=list)
    partial_job: Future | None = None
    partial_due: float = 0.0
    speculation: Speculation | None = None
    speculations: int = 0   # fast paths started for this utterance (pauses the user spoke on after count too)


@dataclass(eq=False)
class Answer:
    """The bot's turn: the jobs making it and what has come back."""

    record: TurnRecord
    cancel: threading.Event
    speculation: Speculation | None
    outbox: deque[SlowPathEvent] = field(default_factory=deque)   # from the slow path's job, in order
    prefix_resolved: bool = False
    generated: bool = False


class Relay:
    def __init__(self, models: SpeechModels, params: RelaySpeechParams, jobs: Executor, stream_id: str = "",
                 stats: tuple[TurnStats, ...] = (), clock: Callable[[], float] = time.monotonic):
        self.models = models
        self.params = params
        self.stream_id = stream_id
        self._jobs = jobs
        self._stats = stats
        self._clock = clock
        self.created_at = clock()
        self.vad: VoiceActivity = models.vad.stream()
        self.detector = TurnDetector()
        self.conversation = Conversation(params.max_context_turns)
        self.playout = Playout(params.output_sample_rate)
        self.apply(params)
        self._resamplers: dict[int, StreamResampler] = {}
        self._audio = np.zeros(0, np.float32)   # recent 16 kHz input; sample 0 of it is `_audio_origin`
        self._audio_origin = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (window index, arrival time), recent windows
        self._listening: Listening | None = None
        self.answer: Answer | None = None
        self._turn_ids = itertools.count(1)
        self._chunk_ids = itertools.count()

    def apply(self, params: RelaySpeechParams) -> None:
        """New parameters; the turn being answered keeps the values it started with."""
        self.params = params
        self.detector.configure(params.vad_threshold, params.min_speech_s, params.pause_s, params.end_of_turn_s, params.max_utterance_s)
        self.conversation.max_turns = params.max_context_turns

    # --- input ---------------------------------------------------------------------------

    def feed(self, chunks: list[AudioChunk]) -> None:
        for chunk in chunks:
            arrived = chunk.timestamps.get("received", self._clock())
            resampler = self._resamplers.get(chunk.sample_rate)
            if resampler is None:
                resampler = self._resamplers[chunk.sample_rate] = StreamResampler(chunk.sample_rate, ASR_RATE)
            audio = resampler(mono_float(chunk.samples))
            self._audio = np.concatenate([self._audio, audio])
            for probability in self.vad(audio):
                self._arrivals.append((self.detector.window + 1, arrived))
                detection = self.detector.push(float(probability))
                if detection is not None:
                    self._on_detection(detection)
            self._trim_audio()

    def _on_detection(self, d: Detection) -> None:
        now = self._clock()
        if d.event is TurnEvent.SPEECH_STARTED:
            onset = self._arrival(d.speech_window)
            if self.answer is not None:
                if not self.params.barge_in:
                    self.detector.speaking = False  # half duplex: the user's voice during the answer is not a turn
                    return
                self._barge_in(onset)
            start = max(self._audio_origin, d.speech_window * WINDOW - int(PREROLL_S * ASR_RATE))
            self._listening = Listening(start, onset, partial_due=now + self.params.partial_interval_s)
        elif self._listening is None:
            return
        elif d.event is TurnEvent.PAUSED:
            if self.params.mode == "relay" and self.params.speculate:
                listening = self._listening
                listening.speculation = self._speculate(self._utterance(listening, d.speech_window), latest(listening.partials))
                listening.speculations += 1
        elif d.event is TurnEvent.RESUMED:
            self._cancel_speculation(self._listening)
        elif d.event is TurnEvent.ENDED:
            self._decide(d, now)

    def _utterance(self, listening: Listening, last_voiced_window: int | None = None) -> np.ndarray:
        end = self._audio_origin + self._audio.size
        if last_voiced_window is not None:
            end = min(end, (last_voiced_window + 1) * WINDOW + int(TAIL_S * ASR_RATE))
        return self._audio[max(0, listening.start_sample - self._audio_origin):end - self._audio_origin].copy()

    def _arrival(self, window: int) -> float:
        for index, at in reversed(self._arrivals):
            if index <= window:
                return at
        return self._arrivals[0][1] if self._arrivals else self._clock()

    def _trim_audio(self) -> None:
        """Keep the utterance being captured (or just the pre-roll), so memory stays bounded."""
        keep_from = self._listening.start_sample if self._listening else self._audio_origin + self._audio.size - int(PREROLL_S * ASR_RATE)
        keep_from = max(keep_from, self._audio_origin + self._audio.size - int((self.params.max_utterance_s + 2) * ASR_RATE))
        drop = keep_from - self._audio_origin
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_origin += drop
        horizon = self.detector.window - int((self.params.max_utterance_s + 2) / WINDOW_S)
        while self._arrivals and self._arrivals[0][0] < horizon:
            self._arrivals.popleft()

    # --- the fast path ---------------------------------------------------------------------

    def _speculate(self, audio: np.ndarray, earlier: str | None) -> Speculation:
        messages = self.conversation.messages(self.params.system_prompt)
        cancel = threading.Event()
        speculation = Speculation(Future(), cancel, self._clock())
        params, voice = self.params, self._voice()
        speculation.future = self._jobs.submit(self._fast_path, speculation, audio, messages, earlier, params, voice)
        return speculation

    def _fast_path(self, speculation: Speculation, audio: np.ndarray, messages: list[Message], earlier: str | None,
                   params: RelaySpeechParams, voice: Synthesizer) -> FastResult:
        transcript = self.models.asr.transcribe(audio, beam_size=1)
        text = usable_text(transcript)
        if not text or speculation.cancel.is_set():
            return FastResult(transcript)
        draft = self.models.drafter.draft([*messages, {"role": "user", "content": text}], params.draft_words, speculation.cancel.is_set)
        probability = self.models.verifier.probability(DraftEvidence(draft, transcript, earlier))
        result = FastResult(transcript, draft, probability, keep=bool(draft.text) and probability >= params.verifier_threshold)
        if result.keep and not speculation.cancel.is_set():
            speech = voice.synthesize(draft.text)
            result.audio, result.tts_s = speech_audio(speech, params.output_sample_rate, draft.text), speech.seconds
        return result

    def _cancel_speculation(self, listening: Listening) -> None:
        if listening.speculation is not None:
            listening.speculation.cancel.set()
            listening.speculation = None

    # --- the turn decision and the slow path ---------------------------------------------

    def _decide(self, d: Detection, now: float) -> None:
        listening, self._listening = self._listening, None
        record = TurnRecord(next(self._turn_ids), self.params.mode, speech_start_at=listening.onset_at,
                            speech_end_at=self._arrival(d.speech_window), decision_at=now, forced_end=d.forced,
                            partials=list(listening.partials))
        audio = self._utterance(listening, d.speech_window)
        speculation = listening.speculation
        if self.params.mode != "relay":
            self._cancel_speculation(listening)
            speculation = None
        elif speculation is None:
            speculation = self._speculate(audio, latest(listening.partials))
            listening.speculations += 1
        record.speculations = listening.speculations
        if speculation is not None:
            record.fast_start = speculation.started_at - now
        answer = Answer(record, threading.Event(), speculation)
        self.answer = answer
        self.playout.new_turn()
        if self.playout.sample_rate != self.params.output_sample_rate and self.playout.idle:
            self.playout = Playout(self.params.output_sample_rate)
        messages = self.conversation.messages(self.params.system_prompt)
        self._jobs.submit(self._slow_path, answer, audio, messages, self.params, self._voice())

    def _slow_path(self, answer: Answer, audio: np.ndarray, messages: list[Message], params: RelaySpeechParams,
                   voice: Synthesizer) -> None:
        put = answer.outbox.append
        try:
            speculation = answer.speculation
            # The fast path first: it is heard first, and on a couple of CPU cores running both at
            # once would slow it down. The kept prefix's playback then covers the slow path.
            fast: FastResult | None = speculation.future.result() if speculation is not None else None
            final = self.models.asr.transcribe(audio, beam_size=5)
            put(FinalTranscript(final))
            user_text = usable_text(final) or (usable_text(fast.transcript) if fast else "")
            if not user_text or answer.cancel.is_set():
                return
            put(UserTurn(user_text))
            prefix = fast.draft.text if fast is not None and fast.keep and fast.draft is not None else ""
            self._speak_continuation(answer, [*messages, {"role": "user", "content": user_text}], prefix, params, voice)
        except Exception as err:  # noqa: BLE001 - the turn fails, the conversation goes on
            put(SlowPathFailed(f"{type(err).__name__}: {err}"))
        finally:
            put(SlowPathDone())

    def _speak_continuation(self, answer: Answer, messages: list[Message], prefix: str, params: RelaySpeechParams,
                            voice: Synthesizer) -> None:
        put = answer.outbox.append
        started = time.perf_counter()
        pending, first_piece, first_clause = "", True, True
        for piece in self.models.responder.respond(messages, prefix, params.max_answer_tokens, answer.cancel.is_set):
            if first_piece:
                put(FirstToken(time.perf_counter() - started))
                piece, fragment = seam_join(prefix, piece)
                if fragment:
                    put(SeamFragment(fragment))
                first_piece = False
            put(ContinuationText(piece))
            pending += piece
            while True:
                words = FIRST_CLAUSE_WORDS if first_clause else CLAUSE_WORDS
                clause, pending = take_clause(pending, *words, final=False)
                if not clause:
                    break
                self._speak(answer, clause, voice, params)
                first_clause = False
        put(LlmFinished(time.perf_counter() - started))
        clause, _ = take_clause(pending, 1, 10**6, final=True)
        if clause:
            self._speak(answer, clause, voice, params)

    def _speak(self, answer: Answer, text: str, voice: Synthesizer, params: RelaySpeechParams) -> None:
        if answer.cancel.is_set():
            return
        speech = voice.synthesize(text)
        answer.outbox.append(ContinuationAudio(speech_audio(speech, params.output_sample_rate, text), text, speech.seconds))

    # --- output and bookkeeping (worker thread) -------------------------------------------

    def advance(self) -> list[AudioChunk]:
        now = self._clock()
        self._collect_partial(now)
        if self.answer is not None:
            self._collect(self.answer)
        chunks = []
        for released in self.playout.release(now, self.params.output_lead_s):
            for segment in released.segments:
                self._on_segment_start(segment, released.play_at)
            chunks.append(AudioChunk(released.samples[:, None], self.playout.sample_rate, next(self._chunk_ids),
                                     released.play_at - self.created_at, self.stream_id, {"finished": now}))
        answer = self.answer
        if answer is not None and answer.generated and answer.prefix_resolved and not answer.outbox \
                and self.playout.idle and self.playout.cursor <= now:
            self._finish(answer)
        return chunks

    def _collect_partial(self, now: float) -> None:
        listening = self._listening
        if listening is None:
            return
        job = listening.partial_job
        if job is not None and job.done():
            listening.partial_job = None
            if job.exception() is None and (text := usable_text(job.result())):
                listening.partials.append(text)
        spoken = (self._audio_origin + self._audio.size - listening.start_sample) / ASR_RATE
        # Partials feed the verifier's stability signal: the cascaded baseline has no use for them.
        if listening.partial_job is None and now >= listening.partial_due and spoken >= MIN_PARTIAL_S and self.detector.speaking \
                and self.params.mode == "relay":
            listening.partial_due = now + self.params.partial_interval_s
            listening.partial_job = self._jobs.submit(self.models.asr.transcribe, self._utterance(listening), 1)

    def _collect(self, answer: Answer) -> None:
        record = answer.record
        if not answer.prefix_resolved:
            speculation = answer.speculation
            if speculation is None:
                answer.prefix_resolved = True
            elif speculation.future.done():
                answer.prefix_resolved = True
                if speculation.future.exception() is not None:
                    record.error = f"fast path: {speculation.future.exception()}"
                else:
                    self._take_fast_result(answer, speculation.future.result())
        while answer.outbox:
            event = answer.outbox[0]
            if isinstance(event, ContinuationAudio) and not answer.prefix_resolved:
                break  # the continuation waits for the prefix, which plays first
            answer.outbox.popleft()
            match event:
                case FinalTranscript():
                    record.final_transcript, record.asr_final = event.transcript.text, event.transcript.seconds
                case UserTurn():
                    self.conversation.add("user", event.text)
                case FirstToken():
                    record.llm_first_token = event.seconds
                case SeamFragment():
                    record.seam_fragment = event.text
                case ContinuationText():
                    record.continuation += event.text
                case LlmFinished():
                    record.llm_total = event.seconds
                case ContinuationAudio():
                    if record.tts_first is None:
                        record.tts_first = event.tts_s
                    self.playout.enqueue(Segment(event.samples, event.text, "continuation", record.turn))
                case SlowPathFailed():
                    record.error = event.message
                case SlowPathDone():
                    answer.generated = True

    def _take_fast_result(self, answer: Answer, fast: FastResult) -> None:
        record = answer.record
        record.fast_transcript = fast.transcript.text
        record.asr_partial = fast.transcript.seconds
        if fast.draft is None:
            return
        record.draft, record.keep_probability, record.kept = fast.draft.text, fast.probability, fast.keep
        record.llm_draft = fast.draft.seconds
        if fast.keep and fast.audio is not None:
            record.prefix = fast.draft.text
            record.tts_first = fast.tts_s
            self.playout.enqueue(Segment(fast.audio, fast.draft.text, "prefix", record.turn))

    def _on_segment_start(self, segment: Segment, play_at: float) -> None:
        record = self.answer.record if self.answer is not None and self.answer.record.turn == segment.turn else None
        if record is None:
            return
        if record.first_audio_at is None:
            record.first_audio_at = play_at
        if segment.role == "continuation" and record.seam_gap is None and record.prefix:
            prefix = next((s for s in self.playout.history if s.role == "prefix"), None)
            if prefix is not None and prefix.ended_at is not None:
                record.seam_gap = max(0.0, play_at - prefix.ended_at)

    def _barge_in(self, onset_at: float) -> None:
        answer = self.answer
        answer.cancel.set()
        if answer.speculation is not None:
            answer.speculation.cancel.set()
        self._collect(answer)  # what the jobs reported so far belongs in the record
        self.playout.stop()
        answer.record.interrupted = True
        if self.playout.history:
            # From the interrupting voice to the end of the last answer audio sent (0 if it had already ended).
            answer.record.barge_in_stop = max(0.0, self.playout.cursor - onset_at)
        self._finish(answer)

    def _finish(self, answer: Answer) -> None:
        heard = " ".join(words_played(s.text, fraction) for s, fraction in self.playout.heard_segments()).strip()
        heard = " ".join(heard.split())
        answer.record.heard = heard
        self.conversation.add("assistant", heard)
        self.answer = None
        for stats in self._stats:
            stats.add(answer.record)

    def _voice(self) -> Synthesizer:
        return self.models.voices[self.params.voice or self.models.default_voice]

    def close(self) -> None:
        """Stop the jobs of this conversation (the stream ended)."""
        if self.answer is not None:
            self.answer.cancel.set()
            if self.answer.speculation is not None:
                self.answer.speculation.cancel.set()
        if self._listening is not None:
            self._cancel_speculation(self._listening)


def latest(partials: list[str]) -> str | None:
    return partials[-1] if partials else None


def usable_text(transcript: Transcript) -> str:
    """The transcript, unless Whisper itself says it heard no speech (it invents words in noise)."""
    if transcript.no_speech_prob > 0.6 and transcript.avg_logprob < -0.8:
        return ""
    return transcript.text.strip()


def speech_audio(speech: Speech, rate: int, text: str) -> np.ndarray:
    """TTS output as played: edges trimmed to 30 ms of silence, a breath after a sentence or a
    comma, at the output rate, int16."""
    audio = trim_silence(speech.audio, speech.sample_rate)
    pause = 0.25 if text.rstrip()[-1:] in ".!?" else 0.12 if text.rstrip()[-1:] in ",;:" else 0.0
    audio = np.concatenate([audio, np.zeros(int(pause * speech.sample_rate), np.float32)])
    return to_int16(resample(audio, speech.sample_rate, rate))


def trim_silence(audio: np.ndarray, rate: int, keep_s: float = 0.03) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > 0.01 * (np.abs(audio).max() + 1e-9)) if audio.size else audio
    if not loud.size:
        return audio[:0]
    keep = int(keep_s * rate)
    return audio[max(0, loud[0] - keep):loud[-1] + 1 + keep]
