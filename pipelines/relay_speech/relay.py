"""One spoken conversation: turn-taking, the relay of a fast draft into the slow path, barge-in.

The compute worker calls `feed` with the audio that arrived and `advance` for the audio due
out, every tick; both are quick (voice activity and bookkeeping). Model work runs on the
pipeline's model lanes (lanes.py: one thread per model, the critical path first), driven from
jobs on its thread pool: the fast path reports back through its future, the slow path through
typed events in the answer's outbox (events.py), and `advance` reads both, so this object's
state is only ever touched by the worker thread.

A turn, in time order (relay mode; the cascaded baseline starts its work at the turn decision):
1. The user speaks. Every `partial_interval_s` a greedy partial transcript is made in the
   background, and the language model reads the words so far into the conversation's cache.
2. First pause (`pause_s` of silence): the fast path starts, speculatively: the transcript (the
   turn's final one), the first `draft_words` words of the answer (the model reads only the
   words it has not read yet), the verifier's verdict, and the voice of the kept draft or, when
   the verifier discards it, of the slow path's own first clause made there instead. At the same
   time the turn model is asked whether the turn is complete. Until the turn is decided none of
   it is heard or remembered; if the user goes on speaking it is dropped (cheaply: the cache
   keeps what still holds).
3. Turn decision (`end_of_turn_s` of silence once the turn model says complete, or
   `incomplete_end_of_turn_s`, or `max_utterance_s` of speech): the kept draft plays as soon as
   it is voiced, and the slow path continues the fast path's own state: same transcript, same
   cache, the prefix already read. A discarded draft costs the fast path one more short clause
   before the decision, not the slow path a step after it.
4. The answer plays out in real time. User speech during it (barge-in) stops it at once, cancels
   the jobs, and only the words that were played enter the conversation; with `barge_in` off the
   user's voice is ignored until the answer ends. The model then reads the history as heard in
   the background, ready for the next turn.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from models.speech.asr import LogMelStream, Transcript
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
from pipelines.relay_speech.lanes import Lanes, Priority
from pipelines.relay_speech.metrics import TurnRecord, TurnStats
from pipelines.relay_speech.params import RelaySpeechParams
from pipelines.relay_speech.playout import Playout, Segment
from pipelines.relay_speech.text import clause_words, seam_join, take_clause, words_played
from pipelines.relay_speech.turn_detector import WINDOW_S, Detection, TurnDetector, TurnEvent
from streaming.frames import AudioChunk

log = logging.getLogger(__name__)

WINDOW = 512
PREROLL_S = 0.5         # audio kept before the detected start of speech (its onset, a soft first word)
LEAD_IN_S = 0.3         # least silence before the speech in a transcript's audio (Whisper drops a first word cut at the edge)
TAIL_S = 0.25           # silence kept after the last voiced window in the transcript's audio
MIN_PARTIAL_S = 0.6     # no partial transcript of less speech than this
READ_AHEAD_TOKENS = 16  # tokens per background read of the prompt: a critical call waits for at most one slice
REASK_WINDOWS = 3       # the turn model is asked again once the pause has grown by about 0.1 s
CRITICAL, BACKGROUND = Priority.CRITICAL, Priority.BACKGROUND


@dataclass
class FastResult:
    """What the fast path produced for one utterance."""

    transcript: Transcript
    draft: Draft | None = None
    probability: float | None = None
    keep: bool = False
    opening: str = ""                 # a discarded draft's replacement: the slow path's own first clause, made at the pause
    audio: np.ndarray | None = None   # the prefix (the kept draft or the opening), voiced, at the output rate
    tts_s: float | None = None
    asr_wait: float = 0.0             # the transcript's wait for the recognizer (a partial transcript still running)
    done_at: float | None = None      # when it was all ready (the worker's clock)

    @property
    def prefix(self) -> str:
        """What the answer starts with, spoken at the decision: the slow path continues from it."""
        if self.keep and self.draft is not None:
            return self.draft.text
        return self.opening


@dataclass(eq=False)
class Speculation:
    future: Future
    cancel: threading.Event
    started_at: float = 0.0
    transcribed: threading.Event = field(default_factory=threading.Event)   # its transcript is done (a core is free)


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
    verdict: Future | None = None   # the turn model's P(complete) for the current pause, being computed
    verdict_pause: int = 0          # the current pause's number
    asked_pause: int = 0            # the pause the turn model was last asked about
    asked_at: int = 0               # silence (windows) when the turn model was last asked
    turn_probability: float | None = None
    turn_model_s: float | None = None
    paused_at: float | None = None  # the pause that started the current speculation
    features: LogMelStream | None = None   # Whisper's features of the utterance, computed as it arrives
    featured: int = 0                      # samples of the utterance they cover


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
    def __init__(self, models: SpeechModels, params: RelaySpeechParams, jobs: Executor, lanes: Lanes, stream_id: str = "",
                 stats: tuple[TurnStats, ...] = (), clock: Callable[[], float] = time.monotonic):
        self.models = models
        self.params = params
        self.stream_id = stream_id
        self._jobs = jobs
        self._lanes = lanes
        self._stats = stats
        self._clock = clock
        self.created_at = clock()
        self.vad: VoiceActivity = models.vad.stream()
        self.detector = TurnDetector(guarded=models.turn is not None)
        self.conversation = Conversation(params.max_context_turns)
        self.playout = Playout(params.output_sample_rate)
        # The conversation's view of the language models: with one model on both paths, one
        # session (one cache) that the slow path continues.
        self.chat = models.drafter.session()
        self.answerer = self.chat if models.responder is models.drafter else models.responder.session()
        self._llm_epoch = 0   # bumped by every critical use of the sessions: older read-aheads are dropped
        self.apply(params)
        self._resamplers: dict[int, StreamResampler] = {}
        self._audio = np.zeros(0, np.float32)   # recent 16 kHz input; sample 0 of it is `_audio_origin`
        self._audio_origin = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (window index, arrival time), recent windows
        self._listening: Listening | None = None
        self.answer: Answer | None = None
        self._turn_ids = itertools.count(1)
        self._chunk_ids = itertools.count()
        self._read_ahead(self.conversation.messages(params.system_prompt), open_end=False)

    def apply(self, params: RelaySpeechParams) -> None:
        """New parameters; the turn being answered keeps the values it started with."""
        self.params = params
        self.detector.configure(params.vad_threshold, params.min_speech_s, params.pause_s, params.end_of_turn_s, params.max_utterance_s,
                                params.incomplete_end_of_turn_s, self.models.turn is not None, params.turn_threshold)
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
            self._extend_features()
            for probability in self.vad(audio):
                self._take_verdict()
                self._ask_turn_model_when_due()
                self._arrivals.append((self.detector.window + 1, arrived))
                detection = self.detector.push(float(probability))
                if detection is not None:
                    self._on_detection(detection)
            self._trim_audio()
        self._take_verdict()

    def _extend_features(self) -> None:
        listening = self._listening
        if listening is not None and listening.features is not None:
            new = self._audio[listening.start_sample + listening.featured - self._audio_origin:]
            listening.features.push(new)
            listening.featured += new.size

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
            self._listening = Listening(start, onset, partial_due=now + self.params.partial_interval_s,
                                        features=self.models.asr.log_mel_stream())
            self._extend_features()
        elif self._listening is None:
            return
        elif d.event is TurnEvent.PAUSED:
            listening = self._listening
            listening.verdict_pause = d.pause
            if self.params.mode == "relay" and self.params.speculate:
                listening.speculation = self._speculate(*self._transcript_input(listening, d.speech_window), latest(listening.partials))
                listening.speculations += 1
                listening.paused_at = now
            self._ask_turn_model_when_due()
        elif d.event is TurnEvent.RESUMED:
            self._cancel_speculation(self._listening)
            self._listening.verdict, self._listening.turn_probability = None, None
        elif d.event is TurnEvent.ENDED:
            self._decide(d, now)

    def _ask_turn_model(self, listening: Listening) -> None:
        """Ask the turn model about the utterance so far, its pause included."""
        turn = self.models.turn
        audio = self._utterance(listening)
        listening.asked_pause, listening.asked_at = listening.verdict_pause, self.detector.silence_windows or 0

        def verdict() -> tuple[float, float]:
            started = time.perf_counter()
            return turn.probability(audio), time.perf_counter() - started

        listening.verdict = self._lanes.turn.submit(CRITICAL, verdict)

    def _ask_turn_model_when_due(self) -> None:
        """The turn model's questions during a pause, checked every window.

        The first comes once the fast path's transcript is done (at once when there is no fast
        path): its verdict is needed only when the short hangover ends, and asked at the pause it
        would take the second core from the transcript (on two cores: 142 ms beside it, 93 ms
        alone), so it waits, but no later than a little before the hangover ends. Then, while the
        model is not yet sure the turn is complete, it is asked again each time the last verdict
        is in and the silence has grown by `REASK_WINDOWS`: the model hears the pause lengthen,
        and a finished sentence grows surer (once it is sure, the short hangover ends the turn).
        """
        listening, silence = self._listening, self.detector.silence_windows
        if listening is None or self.models.turn is None or silence is None or listening.verdict is not None:
            return
        if listening.asked_pause != listening.verdict_pause:
            speculation = listening.speculation
            if speculation is None or speculation.transcribed.is_set() or silence >= self.detector.end_windows - REASK_WINDOWS:
                self._ask_turn_model(listening)
        elif silence - listening.asked_at >= REASK_WINDOWS and (listening.turn_probability or 0.0) < self.params.turn_threshold:
            self._ask_turn_model(listening)

    def _take_verdict(self) -> None:
        """The turn model's answer, once it is in, to the detector (which may then end the turn)."""
        listening = self._listening
        if listening is None or listening.verdict is None or not listening.verdict.done():
            return
        job, listening.verdict = listening.verdict, None
        if job.exception() is not None:
            log.warning("turn model failed (%s); the silence alone decides this turn", job.exception())
            self.detector.verdict(listening.verdict_pause, 1.0)
            return
        listening.turn_probability, listening.turn_model_s = job.result()
        self.detector.verdict(listening.verdict_pause, listening.turn_probability)

    def _utterance(self, listening: Listening, last_voiced_window: int | None = None) -> np.ndarray:
        end = self._audio_origin + self._audio.size
        if last_voiced_window is not None:
            end = min(end, (last_voiced_window + 1) * WINDOW + int(TAIL_S * ASR_RATE))
        audio = self._audio[max(0, listening.start_sample - self._audio_origin):end - self._audio_origin]
        lead_in = int(LEAD_IN_S * ASR_RATE) - listening.start_sample
        if lead_in > 0:
            # Speech from the stream's first moments: silence in front, so Whisper hears the first word whole.
            return np.concatenate([np.zeros(lead_in, np.float32), audio])
        return audio.copy()

    def _transcript_input(self, listening: Listening, last_voiced_window: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The utterance's audio and, when they were computed while it was spoken, its features."""
        audio = self._utterance(listening, last_voiced_window)
        lead_in = int(LEAD_IN_S * ASR_RATE) - listening.start_sample
        features = listening.features.features(audio.size) if listening.features is not None and lead_in <= 0 else None
        return audio, features

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

    # --- reading ahead (background) ------------------------------------------------------

    def _read_ahead(self, messages: list[Message], open_end: bool) -> None:
        """Let the language model read `messages` while nothing waits for it, a slice at a time;
        dropped once a critical call has used the session since (it read what it needed)."""
        epoch = self._llm_epoch
        sessions = {id(s): s for s in (self.chat, self.answerer)}.values()

        def read() -> None:
            if epoch != self._llm_epoch:
                return
            done = [session.prefill(messages, open_end, READ_AHEAD_TOKENS) for session in sessions]   # every session, a slice each
            if not all(done) and epoch == self._llm_epoch:
                self._lanes.llm.submit(BACKGROUND, read)

        self._lanes.llm.submit(BACKGROUND, read)

    def _critical_llm_use(self) -> None:
        self._llm_epoch += 1

    # --- the fast path ---------------------------------------------------------------------

    def _speculate(self, audio: np.ndarray, features: np.ndarray | None, earlier: str | None) -> Speculation:
        messages = self.conversation.messages(self.params.system_prompt)
        cancel = threading.Event()
        speculation = Speculation(Future(), cancel, self._clock())
        params, voice = self.params, self._voice()
        self._critical_llm_use()
        speculation.future = self._jobs.submit(self._fast_path, speculation, audio, features, messages, earlier, params, voice)
        return speculation

    def _fast_path(self, speculation: Speculation, audio: np.ndarray, features: np.ndarray | None, messages: list[Message],
                   earlier: str | None, params: RelaySpeechParams, voice: Synthesizer) -> FastResult:
        lanes, cancelled = self._lanes, speculation.cancel.is_set
        asked = self._clock()
        try:
            transcript = lanes.asr.call(CRITICAL, self.models.asr.transcribe, audio, 1, features)
        finally:
            speculation.transcribed.set()
        asr_wait = max(0.0, self._clock() - asked - transcript.seconds)
        text = usable_text(transcript)
        if not text or cancelled():
            return FastResult(transcript, asr_wait=asr_wait, done_at=self._clock())
        turn = [*messages, {"role": "user", "content": text}]
        draft = lanes.llm.call(CRITICAL, self.chat.draft, turn, params.draft_words, cancelled)
        probability = self.models.verifier.probability(DraftEvidence(draft, transcript, earlier))
        result = FastResult(transcript, draft, probability, keep=bool(draft.text) and probability >= params.verifier_threshold,
                            asr_wait=asr_wait)
        if not result.keep and not cancelled():
            # Discarded: the slow path's own first clause, made now rather than after the decision,
            # so a discarded turn is not a step behind a cascade that starts at the decision.
            result.opening = lanes.llm.call(CRITICAL, self._opening, turn, params, cancelled)
        if result.prefix and not cancelled():
            speech = lanes.tts.call(CRITICAL, voice.synthesize, result.prefix)
            result.audio, result.tts_s = speech_audio(speech, params.output_sample_rate, result.prefix), speech.seconds
        result.done_at = self._clock()
        return result

    def _opening(self, messages: list[Message], params: RelaySpeechParams, cancelled: Callable[[], bool]) -> str:
        """The answer's first clause from the slow path's model, as short as a draft. The cache
        keeps what it read, so the slow path continuing from this clause reads nothing twice."""
        pending = ""
        for piece in self.answerer.respond(messages, "", params.max_answer_tokens, cancelled):
            pending += piece
            clause, _ = take_clause(pending, *clause_words(0, params.draft_words))
            if clause:
                return clause
        return " ".join(pending.split())

    def _cancel_speculation(self, listening: Listening) -> None:
        if listening.speculation is not None:
            listening.speculation.cancel.set()
            listening.speculation = None

    # --- the turn decision and the slow path ---------------------------------------------

    def _decide(self, d: Detection, now: float) -> None:
        listening, self._listening = self._listening, None
        record = TurnRecord(next(self._turn_ids), self.params.mode, speech_start_at=listening.onset_at,
                            speech_end_at=self._arrival(d.speech_window), decision_at=now, forced_end=d.forced,
                            partials=list(listening.partials), turn_probability=listening.turn_probability,
                            turn_model=listening.turn_model_s)
        audio, features = self._transcript_input(listening, d.speech_window)
        speculation = listening.speculation
        if self.params.mode != "relay":
            self._cancel_speculation(listening)
            speculation = None
        elif speculation is None:
            speculation = self._speculate(audio, features, latest(listening.partials))
            listening.speculations += 1
            listening.paused_at = now
        record.speculations = listening.speculations
        if speculation is not None:
            record.fast_start = speculation.started_at - now
        if listening.paused_at is not None and speculation is not None:
            record.pause_at = listening.paused_at
        answer = Answer(record, threading.Event(), speculation)
        self.answer = answer
        self.playout.new_turn()
        if self.playout.sample_rate != self.params.output_sample_rate and self.playout.idle:
            self.playout = Playout(self.params.output_sample_rate)
        messages = self.conversation.messages(self.params.system_prompt)
        self._critical_llm_use()
        self._jobs.submit(self._slow_path, answer, audio, features, messages, self.params, self._voice())

    def _slow_path(self, answer: Answer, audio: np.ndarray, features: np.ndarray | None, messages: list[Message],
                   params: RelaySpeechParams, voice: Synthesizer) -> None:
        put = answer.outbox.append
        try:
            speculation = answer.speculation
            fast: FastResult | None = speculation.future.result() if speculation is not None else None
            # The fast path's transcript is the turn's: no second pass over the same audio.
            transcript = fast.transcript if fast is not None else self._lanes.asr.call(CRITICAL, self.models.asr.transcribe, audio, 1,
                                                                                       features)
            put(FinalTranscript(transcript))
            user_text = usable_text(transcript)
            if not user_text or answer.cancel.is_set():
                return
            put(UserTurn(user_text))
            prefix = fast.prefix if fast is not None else ""
            self._speak_continuation(answer, [*messages, {"role": "user", "content": user_text}], prefix, params, voice)
        except Exception as err:  # noqa: BLE001 - the turn fails, the conversation goes on
            put(SlowPathFailed(f"{type(err).__name__}: {err}"))
        finally:
            put(SlowPathDone())

    def _speak_continuation(self, answer: Answer, messages: list[Message], prefix: str, params: RelaySpeechParams,
                            voice: Synthesizer) -> None:
        """The language model streams the continuation on its lane into a queue; this job cuts it
        into clauses and has each voiced as soon as it is whole (the first ones short, so the
        voice starts soon and keeps ahead of the playback)."""
        put = answer.outbox.append
        pieces: queue.Queue[tuple[str, str | float]] = queue.Queue()

        def generate() -> None:
            started = time.perf_counter()
            try:
                for piece in self.answerer.respond(messages, prefix, params.max_answer_tokens, answer.cancel.is_set):
                    pieces.put(("text", piece))
            finally:
                pieces.put(("end", time.perf_counter() - started))

        started = time.perf_counter()
        generation = self._lanes.llm.submit(CRITICAL, generate)
        pending, first_piece, clause_index = "", True, 1 if prefix else 0
        while True:
            kind, value = pieces.get()
            if kind == "end":
                put(LlmFinished(float(value)))
                break
            piece = str(value)
            if first_piece:
                put(FirstToken(time.perf_counter() - started))
                piece, fragment = seam_join(prefix, piece)
                if fragment:
                    put(SeamFragment(fragment))
                first_piece = False
            put(ContinuationText(piece))
            pending += piece
            while True:
                clause, pending = take_clause(pending, *clause_words(clause_index, params.draft_words))
                if not clause:
                    break
                self._speak(answer, clause, voice, params)
                clause_index += 1
        generation.result()  # the generation's own error, if it failed
        if pending.strip():
            self._speak(answer, " ".join(pending.split()), voice, params)  # the rest, however it ends

    def _speak(self, answer: Answer, text: str, voice: Synthesizer, params: RelaySpeechParams) -> None:
        if answer.cancel.is_set():
            return
        speech = self._lanes.tts.call(CRITICAL, voice.synthesize, text)
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
                if listening.speculation is None and self.answer is None:
                    # The words so far, but the last (it may still change), read ahead.
                    words = " ".join(text.split()[:-1])
                    if words:
                        user = {"role": "user", "content": words}
                        self._read_ahead([*self.conversation.messages(self.params.system_prompt), user], open_end=True)
        spoken = (self._audio_origin + self._audio.size - listening.start_sample) / ASR_RATE
        # Partials feed the read-ahead and the verifier's stability signal: the cascaded baseline does no work before the decision.
        if listening.partial_job is None and now >= listening.partial_due and spoken >= MIN_PARTIAL_S and self.detector.speaking \
                and listening.speculation is None and self.params.mode == "relay":
            listening.partial_due = now + self.params.partial_interval_s
            audio, features = self._transcript_input(listening)
            listening.partial_job = self._lanes.asr.submit(BACKGROUND, self.models.asr.transcribe, audio, 1, features)

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
                    record.final_transcript, record.asr = event.transcript.text, event.transcript.seconds
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
        record.final_transcript, record.asr = fast.transcript.text, fast.transcript.seconds   # the turn's transcript, if interrupted now
        record.asr_wait, record.fast_done_at = fast.asr_wait, fast.done_at
        if fast.draft is None:
            return
        record.draft, record.keep_probability, record.kept = fast.draft.text, fast.probability, fast.keep
        record.llm_draft, record.draft_read_tokens = fast.draft.seconds, fast.draft.new_tokens
        if fast.prefix and fast.audio is not None:
            record.prefix = fast.prefix
            record.tts_first = fast.tts_s
            self.playout.enqueue(Segment(fast.audio, fast.prefix, "prefix", record.turn))

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
        # The history as heard, read ahead while the answer plays out and the user thinks.
        self._read_ahead(self.conversation.messages(self.params.system_prompt), open_end=False)

    def _voice(self) -> Synthesizer:
        return self.models.voices[self.params.voice or self.models.default_voice]

    def close(self) -> None:
        """Stop the jobs of this conversation (the stream ended) and free its cache once the
        language model's lane is done with it."""
        if self.answer is not None:
            self.answer.cancel.set()
            if self.answer.speculation is not None:
                self.answer.speculation.cancel.set()
        if self._listening is not None:
            self._cancel_speculation(self._listening)
        self._critical_llm_use()
        for session in {id(s): s for s in (self.chat, self.answerer)}.values():
            self._lanes.llm.submit(CRITICAL, session.close)


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
