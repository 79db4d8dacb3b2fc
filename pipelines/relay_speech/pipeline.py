"""The relay-speech pipeline: spoken dialogue, audio in and audio out (see relay.py).

The server talks to it through the pipeline contract alone. Each step hands a stream the audio
that arrived since the last one and takes back the answer audio now due, so it is stepped on a
clock (every tick of its SLO's rate), whether or not audio came in. Steps are cheap: model work
runs on the pipeline's own threads (a lane per model, lanes.py, driven by jobs on a small pool),
never on the compute worker, so a long answer does not hold up other streams' ticks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from models.speech.bundle import SpeechModels
from pipelines.base import ParamError, Pipeline, PipelineKind, PipelineState, StepInput, StepOutput
from pipelines.relay_speech.lanes import Lanes
from pipelines.relay_speech.metrics import TurnStats, prometheus_families
from pipelines.relay_speech.params import RelaySpeechParams
from pipelines.relay_speech.relay import Relay
from pipelines.relay_speech.scheduling import PROFILE
from streaming.frames import AudioChunk

# Jobs of all streams together: each stream runs at most a fast path and a slow path at once;
# they mostly wait for the model lanes, which run the models' calls one at a time.
JOB_THREADS = 6


@dataclass(eq=False)
class RelaySpeechState(PipelineState):
    params: RelaySpeechParams
    relay: Relay
    stats: TurnStats


class RelaySpeechPipeline(Pipeline[RelaySpeechState]):
    name = "relay-speech"
    kind = PipelineKind.AUDIO_TO_AUDIO
    params_model = RelaySpeechParams
    scheduling = PROFILE

    def __init__(self, models: SpeechModels, jobs: Executor | None = None, lanes: Lanes | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.models = models
        self._clock = clock
        self.jobs = jobs or ThreadPoolExecutor(JOB_THREADS, thread_name_prefix="speech-job")
        self.lanes = lanes or Lanes()
        self.stats = TurnStats()  # every stream's turns, for /metrics

    def build_state(self, params: RelaySpeechParams, stream_id: str) -> RelaySpeechState:
        self._check_voice(params)
        stats = TurnStats()
        relay = Relay(self.models, params, self.jobs, self.lanes, stream_id, (stats, self.stats), self._clock)
        return RelaySpeechState(params=params, stream_id=stream_id, relay=relay, stats=stats)

    def apply_hot(self, state: RelaySpeechState, new: RelaySpeechParams, changed: list[str]) -> None:
        self._check_voice(new)
        state.relay.apply(new)

    def _check_voice(self, params: RelaySpeechParams) -> None:
        """The voice must be one this server loaded (the schema cannot know which)."""
        if params.voice is not None and params.voice not in self.models.voices:
            raise ParamError(f"voice: unknown voice {params.voice!r}; this server has {', '.join(self.models.voices)}", field="voice")

    def step(self, batch: Sequence[tuple[RelaySpeechState, StepInput]]) -> list[StepOutput]:
        outputs = []
        for state, audio in batch:
            chunks = [c for c in audio if isinstance(c, AudioChunk)] if isinstance(audio, Sequence) else []
            state.relay.feed(chunks)
            outputs.append(StepOutput(frames=state.relay.advance()))
        return outputs

    def in_flight(self, state: RelaySpeechState) -> int:
        return 0 if state.relay.answer is None else 1

    def stream_stats(self, state: RelaySpeechState) -> dict[str, Any]:
        """The `speech` section of a stream's stats message: turn percentiles, the last turns, the
        turn being answered (so far: a client can show the user's words before the answer ends),
        the conversation as the LLM sees it."""
        relay = state.relay
        answer = relay.answer
        return {"speech": {**state.stats.snapshot(last=3), "answering": answer.record.to_dict() if answer is not None else None,
                           "context": relay.conversation.history, "voices": list(self.models.voices),
                           "models": self.models.description}}

    def metric_families(self, name: str) -> list[Any]:
        return prometheus_families(self.stats, name)

    def close_state(self, state: RelaySpeechState) -> None:
        state.relay.close()
