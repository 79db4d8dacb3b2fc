"""The relay's orchestration with fake components: what is drafted, kept, spoken and remembered,
in which order and when (jobs inline, time on a fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from models.speech.llm import drop_repeated_overlap
from pipelines.relay_speech.conversation import Conversation as Context
from pipelines.relay_speech.lanes import Priority
from pipelines.relay_speech.relay import LEAD_IN_S, PREROLL_S, TAIL_S
from pipelines.relay_speech.text import clause_words, seam_join, take_clause, words_played
from pipelines.relay_speech.turn_detector import TurnDetector, TurnEvent

from speech_fakes import Conversation, FakeClock, FixedTurnModel, InlineExecutor, ManualExecutor, ScriptedAsr, ScriptedChat, fake_models, speech

ANSWER = "The capital of France is Paris. It is a big city."


def test_kept_draft_is_spoken_first_and_continued_from_exactly():
    talk = Conversation(fake_models(verifier_p=0.9))
    talk.wait(0.3)
    talk.play(speech(1.5))
    talk.wait(3.0)
    record = talk.turn_stats.records()[-1]
    assert record.kept is True and record.prefix == "The capital"   # the first chunk: `draft_words` (2) words
    chat = talk.models.drafter
    (messages, prefix), = chat.responses
    assert prefix == "The capital"
    assert messages[-1] == {"role": "user", "content": "what is the capital of france"}
    # The prefix is voiced first, then the continuation clause by clause (the next one short); together: the answer, once.
    assert talk.voice.spoken == ["The capital", "of France is Paris.", "It is a big city."]
    assert record.reply.split() == ANSWER.split()
    assert record.heard == ANSWER
    assert talk.relay.conversation.history == [{"role": "user", "content": "what is the capital of france"},
                                               {"role": "assistant", "content": ANSWER}]


def test_turn_timing_relay_speaks_at_the_decision():
    talk = Conversation(fake_models(verifier_p=0.9), end_of_turn_s=0.5)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(2.5)
    record = talk.turn_stats.records()[-1]
    # Jobs are instant here, so the first audio leaves on the tick of the decision...
    assert 0 <= record.decision_to_first_audio <= 0.021
    # ...which comes one hangover after the voice ended (no turn model: the hangover alone).
    assert 0.45 <= record.speech_end_to_first_audio <= 0.6
    assert record.seam_gap == 0.0  # the continuation was queued behind the prefix
    # Drafted at the first pause (64 ms of silence), about 0.44 s before the decision.
    assert -0.47 <= record.fast_start <= -0.4 and 0.05 <= record.speech_end_to_pause <= 0.1


def test_discarded_draft_is_never_voiced_and_the_slow_path_answers_from_the_same_transcript():
    asr = ScriptedAsr(fast="what is the capital of france", final="a second pass would say this")
    talk = Conversation(fake_models(verifier_p=0.2, asr=asr), verifier_threshold=0.5)
    talk.wait(0.3)
    talk.play(speech(1.5))
    talk.wait(3.0)
    record = talk.turn_stats.records()[-1]
    # The draft was discarded; the slow path's own first clause (here the same words: one model)
    # was made at the pause instead and is what the answer continues from.
    assert record.kept is False and record.draft == "The capital" and record.prefix == "The capital"
    (messages, opening_prefix), (continued_messages, prefix) = talk.models.drafter.responses
    assert opening_prefix == "" and prefix == "The capital" and continued_messages == messages
    assert talk.voice.spoken == ["The capital", "of France is Paris.", "It is a big city."]
    assert record.reply.split() == ANSWER.split()
    # One transcript for the turn, the greedy one made at the pause: no second (beam) pass.
    assert messages[-1]["content"] == "what is the capital of france" == record.final_transcript
    critical = [name for priority, name in talk.lanes.asr.calls if priority is Priority.CRITICAL]
    assert len(critical) == 1 and all(beam == 1 for _, beam in asr.calls)


def test_a_discarded_draft_gives_way_to_the_slow_models_opening_ready_at_the_decision():
    drafter = ScriptedChat(answer="Paris is lovely in spring.")
    responder = ScriptedChat(answer="The capital of France is Paris, on the Seine.")
    talk = Conversation(fake_models(verifier_p=0.2, chat=drafter, responder=responder), verifier_threshold=0.5, end_of_turn_s=0.5)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(2.5)
    record = talk.turn_stats.records()[-1]
    assert record.kept is False and record.draft == "Paris is" and record.prefix == "The capital"
    # The drafter's words are never spoken; the slow model's opening plays on the decision's tick,
    # as a kept draft would (jobs are instant here), and its continuation follows it.
    assert talk.voice.spoken[0] == "The capital" and "Paris is" not in talk.voice.spoken
    assert 0 <= record.decision_to_first_audio <= 0.021
    assert [prefix for _, prefix in responder.responses] == ["", "The capital"]
    assert record.reply.split() == "The capital of France is Paris, on the Seine.".split()


def test_cascaded_mode_never_drafts():
    talk = Conversation(fake_models(verifier_p=0.9), mode="cascaded")
    talk.wait(0.3)
    talk.play(speech(1.5))
    talk.wait(3.0)
    assert talk.models.drafter.drafts == []
    record = talk.turn_stats.records()[-1]
    assert record.kept is None and record.reply == ANSWER


def test_speculation_of_a_mid_sentence_pause_is_dropped_when_the_user_goes_on():
    asr = ScriptedAsr()
    talk = Conversation(fake_models(verifier_p=0.9, asr=asr), pause_s=0.15, end_of_turn_s=0.6)
    talk.wait(0.3)
    talk.play(speech(0.8))
    talk.wait(0.3)            # a pause: the fast path drafts (and voices) speculatively...
    assert talk.models.drafter.drafts and talk.out == []   # ...but nothing is heard
    assert talk.relay.conversation.history == []            # ...or remembered
    talk.play(speech(0.8, seed=3))
    talk.wait(3.0)
    assert len(talk.turn_stats.records()) == 1
    assert len(talk.models.drafter.drafts) == 2             # drafted again at the real end
    assert talk.turn_stats.records()[0].speculations == 2
    # One prefix, one answer heard.
    assert talk.turn_stats.records()[0].heard == ANSWER
    # The fast path transcribed the whole utterance, not just its first part.
    fast_calls = [seconds for seconds, beam in asr.calls if beam == 1]
    assert max(fast_calls) > 1.7


def _decision_after(turn: FixedTurnModel, **params) -> float:
    talk = Conversation(fake_models(turn=turn), end_of_turn_s=0.3, incomplete_end_of_turn_s=1.2, **params)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(4.0)
    record = talk.turn_stats.records()[-1]
    assert record.heard == ANSWER
    return record.speech_end_to_decision


def test_turn_model_lets_a_short_hangover_end_a_finished_sentence():
    turn = FixedTurnModel(0.95)
    assert 0.27 <= _decision_after(turn) <= 0.36
    # Asked once, at the first pause, with the utterance so far (its pre-roll, the speech, the
    # pause): sure at once, it is not asked again.
    assert len(turn.queries) == 1 and 1.0 <= turn.queries[0] <= 1.0 + PREROLL_S + LEAD_IN_S + 0.15


def test_an_unsure_turn_model_doubles_the_hangover_and_an_unfinished_verdict_waits_for_the_long_one():
    unsure = FixedTurnModel(0.7)
    assert 0.57 <= _decision_after(unsure) <= 0.66
    # Asked again as the pause grew, each time about a longer stretch of it.
    assert len(unsure.queries) >= 3 and unsure.queries == sorted(unsure.queries) and unsure.queries[-1] - unsure.queries[0] >= 0.3
    # Sure the sentence is unfinished: the long hangover (1.2 s, set above) less the VAD's lag, plus
    # at most a 20 ms tick and a 32 ms window (the fake clock makes this exact to a tick).
    assert 1.17 <= _decision_after(FixedTurnModel(0.1)) <= 1.26
    assert 0.27 <= _decision_after(FixedTurnModel(0.7), turn_threshold=0.6) <= 0.36


def test_the_turn_model_waits_for_the_fast_paths_transcript_but_not_past_the_hangover():
    def asked_after(release_fast_path: bool) -> list[float]:
        jobs, turn = ManualExecutor(), FixedTurnModel(0.95)
        talk = Conversation(fake_models(turn=turn), jobs=jobs, end_of_turn_s=0.3)
        talk.wait(0.3)
        talk.play(speech(1.0))
        talk.wait(0.1)              # paused: the fast path's transcript is queued, the turn model not asked
        assert turn.queries == [] and jobs.queued
        if release_fast_path:
            jobs.run_all()          # transcribed: the second core is free for the turn model
        talk.wait(0.04)
        early = len(turn.queries)
        talk.wait(0.12)             # 0.26 s of silence: a little before the short hangover ends, asked anyway
        return [early, len(turn.queries)]

    assert asked_after(release_fast_path=True) == [1, 1]
    assert asked_after(release_fast_path=False) == [0, 1]


def _comma_pause(turn: FixedTurnModel | None) -> Conversation:
    """"I was wondering, | could you tell me a story?": 0.5 s of silence at the comma."""
    talk = Conversation(fake_models(turn=turn), end_of_turn_s=0.3, incomplete_end_of_turn_s=1.2)
    talk.wait(0.3)
    talk.play(speech(0.8))
    talk.wait(0.5)
    talk.play(speech(0.9, seed=4))
    talk.wait(3.0)
    return talk


def test_turn_model_keeps_a_sentence_open_at_a_comma():
    guarded = _comma_pause(FixedTurnModel(finished_after_s=2.5))   # unfinished at the comma, finished at the end
    (record,) = guarded.turn_stats.records()   # one turn: the user was not cut off
    assert record.speculations == 2 and record.turn_probability == 0.95
    assert 2.0 <= record.speech_end_at - record.speech_start_at <= 2.5
    # The same pause with the silence alone deciding cuts the user off: two turns.
    assert len(_comma_pause(None).turn_stats.records()) == 2


def test_a_late_verdict_ends_the_turn_when_it_comes():
    turn_lane = ManualExecutor()
    talk = Conversation(fake_models(turn=FixedTurnModel(0.95)), end_of_turn_s=0.3, incomplete_end_of_turn_s=1.5)
    talk.lanes.turn.submit = lambda priority, fn, *args: turn_lane.submit(fn, *args)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(0.7)            # past the short hangover, but the turn model has not answered
    assert talk.turn_stats.total == 0 and talk.relay.answer is None
    turn_lane.run_all()
    talk.wait(0.04)
    assert talk.relay.answer is not None
    assert 0.69 <= talk.relay.answer.record.speech_end_to_decision <= 0.8


def test_the_model_reads_ahead_the_history_and_the_words_being_spoken():
    chat = ScriptedChat()
    asr = ScriptedAsr(fast="what is the capital of france")
    talk = Conversation(fake_models(asr=asr, chat=chat), partial_interval_s=0.5)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(3.0)
    history = [{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": ANSWER}]
    assert (talk.relay.conversation.messages(talk.relay.params.system_prompt), False) in chat.prefills   # the history as heard
    chat.prefills.clear()
    talk.lanes.asr.calls.clear()
    talk.wait(0.3)
    talk.play(speech(1.6, seed=2))   # long enough for partial transcripts
    spoken = [messages for messages, open_end in chat.prefills if open_end]
    # The words so far but the last, with the user's message left open, after the history.
    assert spoken and spoken[-1][1:3] == history and spoken[-1][-1] == {"role": "user", "content": "what is the capital of"}
    llm = talk.lanes.llm.calls
    assert {p for p, name in llm if name == "read"} == {Priority.BACKGROUND}
    assert {p for p, name in talk.lanes.asr.calls[:-1]} == {Priority.BACKGROUND}   # partials; the pause's transcript comes next
    talk.wait(3.0)
    assert talk.lanes.asr.calls[-1][0] is Priority.CRITICAL and talk.turn_stats.total == 2


def test_cascaded_mode_does_no_work_before_the_decision():
    asr = ScriptedAsr()
    talk = Conversation(fake_models(asr=asr), mode="cascaded", partial_interval_s=0.3)
    talk.wait(0.3)
    talk.play(speech(1.6))
    talk.wait(0.2)
    assert asr.calls == [] and talk.models.drafter.drafts == []
    talk.wait(3.0)
    assert len(asr.calls) == 1 and talk.turn_stats.records()[-1].heard == ANSWER


def test_first_word_at_the_stream_start_is_transcribed_with_silence_before_it():
    asr = ScriptedAsr()
    talk = Conversation(fake_models(asr=asr), partial_interval_s=30)
    talk.play(speech(1.0))     # the user speaks from the first sample the server gets
    talk.wait(2.5)
    (seconds, _), = asr.calls
    # All of the speech, behind the lead-in Whisper needs to hear a first word whole.
    assert seconds >= 1.0 + LEAD_IN_S


def test_the_transcript_at_the_pause_reads_features_computed_while_the_user_spoke():
    from faster_whisper.feature_extractor import FeatureExtractor

    asr = ScriptedAsr(features=True)
    talk = Conversation(fake_models(asr=asr), partial_interval_s=30)
    talk.wait(1.0)
    talk.play(speech(1.3))
    talk.wait(2.0)
    (audio, features), = asr.features
    assert features is not None
    np.testing.assert_allclose(features, FeatureExtractor()(audio), atol=1e-5)   # as if computed from the whole utterance


def test_log_mel_stream_equals_whisper_features_of_the_whole_audio():
    from faster_whisper.feature_extractor import FeatureExtractor

    from models.speech.asr import LogMelStream

    extractor = FeatureExtractor()
    rng = np.random.default_rng(1)
    audio = (0.1 * np.sin(np.arange(40000) * 0.03) + rng.normal(0, 0.02, 40000)).astype(np.float32)
    stream = LogMelStream(extractor.mel_filters)
    start = 0
    while start < audio.size:   # in pieces of any size, as chunks arrive
        size = int(rng.integers(1, 700))
        stream.push(audio[start:start + size])
        start += size
    for samples in (40000, 39000, 12345, 500):
        np.testing.assert_allclose(stream.features(samples), extractor(audio[:samples]), atol=1e-5)
    assert stream.features(40001) is None


def test_closing_the_stream_frees_the_model_sessions():
    talk = Conversation(fake_models())
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.relay.close()
    assert talk.models.drafter.closed == 1
    assert talk.lanes.llm.calls[-1] == (Priority.CRITICAL, "close")


def test_barge_in_stops_output_and_keeps_only_what_was_played():
    long_answer = " ".join(f"word{i}" for i in range(60)) + "."
    talk = Conversation(fake_models(verifier_p=0.9, chat=ScriptedChat(long_answer)))
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(1.5)            # the answer (6 s of speech) is playing
    record = talk.relay.answer.record
    assert record.first_audio_at is not None
    interrupt_at = talk.clock.t
    talk.play(speech(0.5, seed=7))
    # Output stopped: nothing released after the interruption was detected, and its last sample
    # had played within 250 ms of the interrupting voice.
    assert record.interrupted and record.barge_in_stop is not None and record.barge_in_stop <= 0.25
    last_release = max(t for t, _ in talk.out)
    assert last_release <= interrupt_at + 0.25
    heard = record.heard.split()
    assert 5 < len(heard) < 40 and heard == long_answer.split()[:len(heard)]
    assert talk.relay.conversation.history[-1] == {"role": "assistant", "content": record.heard}
    # Heard words match the audio released: 0.1 s per word (plus the tone's edges).
    assert abs(talk.output_seconds() - WORD_TIME * len(heard)) <= 0.25
    talk.wait(8.0)  # the interruption is itself a turn, answered in full
    assert talk.turn_stats.records()[-1].heard == long_answer


WORD_TIME = 0.1


def test_barge_in_before_any_audio_cancels_the_answer_without_side_effects():
    jobs = ManualExecutor()
    talk = Conversation(fake_models(verifier_p=0.9), jobs=jobs)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(0.6)            # the turn is decided; its jobs have not run yet
    first = talk.relay.answer
    assert first is not None and jobs.queued
    talk.play(speech(0.4, seed=5))   # the user goes on before any answer audio
    assert first.record.interrupted and first.record.barge_in_stop is None and first.cancel.is_set()
    jobs.run_all()            # the cancelled jobs finish: nothing of them is heard or remembered
    talk.wait(0.1)
    assert talk.out == [] and talk.relay.conversation.history == []
    talk.wait(0.6)
    jobs.run_all()
    talk.wait(2.5)
    assert talk.turn_stats.records()[-1].heard == ANSWER
    assert talk.relay.conversation.history[0]["role"] == "user"


def test_noise_only_and_silence_make_no_turn():
    talk = Conversation(fake_models())
    talk.wait(5.0)
    rng = np.random.default_rng(0)
    talk.play((rng.normal(0, 0.02, 16000 * 3)).astype(np.float32))  # below the fake VAD's voice level
    assert talk.turn_stats.total == 0 and talk.out == []


def test_very_long_speech_is_cut_at_max_utterance_and_answered():
    asr = ScriptedAsr()
    talk = Conversation(fake_models(asr=asr), max_utterance_s=3.0)
    talk.wait(0.3)
    talk.play(speech(7.5))
    talk.wait(4.0)
    records = talk.turn_stats.records()
    assert records[0].forced_end
    longest = 3.0 + PREROLL_S + LEAD_IN_S + TAIL_S
    assert all(seconds <= longest + 0.1 for seconds, _ in asr.calls)  # bounded audio per transcript
    assert records[-1].heard  # the last part was answered


def test_context_is_bounded():
    talk = Conversation(fake_models(), max_context_turns=2)
    for i in range(4):
        talk.wait(0.3)
        talk.play(speech(0.6, seed=i))
        talk.wait(3.0)
    history = talk.relay.conversation.history
    assert len(history) == 4 and history[0]["role"] == "user"
    assert talk.turn_stats.total == 4


def test_seam_fragment_is_dropped_not_spoken():
    chat = ScriptedChat("Paris is the capital of France.", continuation="ian food, yes.")
    talk = Conversation(fake_models(verifier_p=0.9, chat=chat), draft_words=1)
    talk.wait(0.3)
    talk.play(speech(1.0))
    talk.wait(3.0)
    record = talk.turn_stats.records()[-1]
    assert record.prefix == "Paris" and record.seam_fragment == "ian"
    assert record.heard == "Paris food, yes."


def test_stream_stats_have_percentiles():
    talk = Conversation(fake_models())
    for i in range(3):
        talk.wait(0.3)
        talk.play(speech(0.8, seed=i))
        talk.wait(3.0)
    snap = talk.turn_stats.snapshot(last=2)
    assert snap["turns"] == 3 and snap["keep_rate"] == 1.0
    assert snap["speech_end_to_first_audio_ms"]["p50"] is not None
    assert len(snap["last_turns"]) == 2 and snap["last_turns"][-1]["reply"] == ANSWER


# --- pieces ------------------------------------------------------------------------------


def test_lanes_run_critical_calls_first_and_background_calls_only_when_nothing_critical_waits():
    import threading
    import time

    from pipelines.relay_speech.lanes import Lanes

    lanes = Lanes()
    order: list[str] = []
    gate = threading.Event()
    blocker = lanes.asr.submit(Priority.CRITICAL, gate.wait, 5)
    behind = [lanes.llm.submit(Priority.BACKGROUND, order.append, "llm background"),   # another lane: waits for the critical work
              lanes.asr.submit(Priority.BACKGROUND, order.append, "asr background"),
              lanes.asr.submit(Priority.CRITICAL, order.append, "asr critical")]        # queued last, runs first
    time.sleep(0.3)
    assert order == []
    gate.set()
    for future in [blocker, *behind]:
        future.result(5)
    assert order[0] == "asr critical" and sorted(order[1:]) == ["asr background", "llm background"]
    # A lane holding a background call back still runs its own critical call that comes meanwhile.
    gate.clear()
    order.clear()
    blocker = lanes.asr.submit(Priority.CRITICAL, gate.wait, 5)
    waiting = lanes.llm.submit(Priority.BACKGROUND, order.append, "llm background")
    time.sleep(0.1)
    lanes.llm.call(Priority.CRITICAL, order.append, "llm critical")   # would wait for ever if the lane waited for the critical work
    assert order == ["llm critical"]
    gate.set()
    blocker.result(5), waiting.result(5)
    assert order == ["llm critical", "llm background"]
    with pytest.raises(ZeroDivisionError):
        lanes.tts.call(Priority.CRITICAL, lambda: 1 / 0)
    lanes.close()


def test_turn_detector_start_pause_resume_end():
    d = TurnDetector(threshold=0.5, min_speech_s=0.1, pause_s=0.1, end_of_turn_s=0.3, max_utterance_s=10)
    events = [(i, d.push(p)) for i, p in enumerate([0.1] * 3 + [0.9] * 10 + [0.1] * 4 + [0.9] * 5 + [0.1] * 12)]
    found = [(i, e.event) for i, e in events if e is not None]
    # Voice in windows 3-12 and 17-21; a pause is 3 silent windows, the end of the turn 9.
    assert found == [(5, TurnEvent.SPEECH_STARTED), (15, TurnEvent.PAUSED), (17, TurnEvent.RESUMED),
                     (24, TurnEvent.PAUSED), (30, TurnEvent.ENDED)]
    assert events[5][1].speech_window == 3 and events[30][1].speech_window == 21


def test_turn_detector_hysteresis_and_max_length():
    d = TurnDetector(threshold=0.5, min_speech_s=0.05, pause_s=0.1, end_of_turn_s=0.2, max_utterance_s=1.0)
    events = [d.push(p) for p in [0.9] * 2 + [0.4] * 40]  # wavering just under the threshold: not silence
    ended = [e for e in events if e is not None and e.event is TurnEvent.ENDED]
    assert len(ended) == 1 and ended[0].forced


def test_text_helpers():
    assert take_clause(" is Paris. It is", 2, 12) == ("is Paris.", " It is")
    assert take_clause(" one two three fou", 2, 3) == ("one two three", " fou")
    assert take_clause(" one two", 4, 12) == ("", " one two")
    assert take_clause(" Yes. It is", *clause_words(0, 2)) == ("Yes.", " It is")   # a first clause may be one word
    assert take_clause(" The capital of", *clause_words(0, 2)) == ("The capital", " of")
    assert seam_join("It is Paris", "ian, yes") == (", yes", "ian")
    assert seam_join("It is", " Paris.") == (" Paris.", "")
    assert drop_repeated_overlap("The capital of France is", " France is Paris.") == " Paris."
    assert drop_repeated_overlap("The capital", " is Paris.") == " is Paris."
    assert words_played("one two three four", 1.0) == "one two three four"
    assert words_played("one two three four", 0.0) == ""
    assert words_played("one two three four", 0.55) == "one two"


def test_conversation_merges_consecutive_user_messages_and_bounds_length():
    ctx = Context(max_turns=1)
    ctx.add("user", "hello")
    ctx.add("user", "are you there")
    assert ctx.history == [{"role": "user", "content": "hello are you there"}]
    ctx.add("assistant", "yes")
    ctx.add("user", "good")
    assert ctx.history == [{"role": "user", "content": "good"}]
    assert ctx.messages("sys", "next")[0] == {"role": "system", "content": "sys"}


def test_openai_endpoint_continues_the_prefix_and_drops_a_restated_overlap():
    import json

    import httpx

    from models.speech.llm_openai import OpenAIResponder

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        pieces = ["France ", "is ", "Paris", ", of course."] if len(body["messages"]) > 2 else ["Hello", " there."]
        events = "".join(f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n" for p in pieces) + "data: [DONE]\n\n"
        return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})

    responder = OpenAIResponder("http://endpoint.invalid/v1", "big-model", "key", client=httpx.Client(transport=httpx.MockTransport(handler)))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital of france?"}]
    assert "".join(responder.respond(messages, "The capital of France is", 40)) == " Paris, of course."
    assert seen[0]["stream"] and seen[0]["model"] == "big-model" and "already begun" in seen[0]["messages"][-1]["content"]
    assert "".join(responder.respond(messages[:2], "", 40)) == "Hello there."


def test_pipeline_contract_steps_audio_and_exports_its_turns():
    from prometheus_client import CollectorRegistry, generate_latest

    from pipelines.base import ParamError
    from pipelines.relay_speech.pipeline import RelaySpeechPipeline
    from streaming.frames import AudioChunk
    from streaming.metrics import _PipelineCollector

    clock = FakeClock()
    pipeline = RelaySpeechPipeline(fake_models(), jobs=InlineExecutor(), clock=clock)
    state = pipeline.new_state({"output_sample_rate": 16000}, "s1")
    with pytest.raises(ParamError) as bad:
        pipeline.update(state, {"voice": "nobody"})
    assert bad.value.field == "voice" and state.params.voice is None
    assert pipeline.update(state, {"end_of_turn_s": 0.4}).applied == ["end_of_turn_s"]
    # 48 kHz stereo in, as WebRTC would deliver it: resampled once inside.
    clip = np.concatenate([np.zeros(int(0.3 * 48000)), 0.3 * np.sin(np.arange(48000) * 2 * np.pi * 180 / 48000), np.zeros(48000 * 3)])
    out = []
    for i in range(0, clip.size, 960):
        piece = (clip[i:i + 960] * 32767).astype(np.int16)
        chunk = AudioChunk(np.stack([piece, piece], axis=1), 48000, i // 960, None, "s1")
        clock.t += 0.02
        out += pipeline.step([(state, [chunk])])[0].frames
    clock.t += 0.02
    out += pipeline.step([(state, None)])[0].frames   # a tick without audio
    assert out and all(isinstance(c, AudioChunk) and c.sample_rate == 16000 and c.channels == 1 for c in out)
    assert [c.chunk_id for c in out] == list(range(len(out)))
    stats = pipeline.stream_stats(state)["speech"]
    assert stats["turns"] == 1 and stats["context"][0]["role"] == "user"
    registry = CollectorRegistry()
    registry.register(_PipelineCollector(lambda: [("relay-speech", pipeline)]))
    text = generate_latest(registry).decode()
    assert 'latentcast_speech_turns_total{pipeline="relay-speech"} 1.0' in text
    assert 'latentcast_speech_seconds{measure="speech_end_to_first_audio",pipeline="relay-speech",quantile="0.50"}' in text


def test_whisper_saying_the_utterance_twice_is_caught_but_a_repeated_word_is_not():
    from models.speech.asr import ends_in_repeat

    assert ends_in_repeat([7, 1, 2, 3, 4, 1, 2, 3, 4])
    assert ends_in_repeat([5, 6, 7, 5, 6, 7])
    assert not ends_in_repeat([1, 2, 2, 3])          # "very very good": people say that
    assert not ends_in_repeat([1, 2, 3, 1, 2, 4])
    assert not ends_in_repeat([])
