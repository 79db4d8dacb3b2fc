"""The relay-speech pipeline with its real models behind the real server, over the WebSocket API.

A simulated user speaks synthesised questions (espeak-ng's voice, so it is never confused with
the bot's Piper voice) with room noise, in real-time 20 ms chunks, and listens; the answer is
transcribed back with Whisper. The models load once for the module (about half a minute on two
cores); each test opens its own session. Timings on this shared machine are not asserted here,
except barge-in, whose bound is the acceptance criterion (benchmarks/speech_relay.py measures
latency).
"""

from __future__ import annotations

import difflib

import httpx
import numpy as np
import pytest

from benchmarks.speech_relay import Talker, one_turn, speech_stats
from models.speech.audio import resample
from models.speech.stimuli import Utterance, noise, speak
from models.speech.verifier import normalized_words
from streaming.client import StreamClient, StreamClientError
from streaming.protocol import MediaFormat, MediaHeader, MediaKind, pack_media

from conftest import make_settings, serve_in_thread

pytestmark = pytest.mark.timeout(600)

RATE = 16000


@pytest.fixture(scope="module")
def server(speech_models):
    from pipelines.relay_speech.pipeline import RelaySpeechPipeline

    pipeline = RelaySpeechPipeline(speech_models)
    with serve_in_thread(make_settings(), lambda: {"relay-speech": pipeline}) as url:
        yield url


def question(voice, text: str, seed: int = 0) -> Utterance:
    return speak(voice, text, RATE, snr_db=30, lead_s=0.3, tail_s=0.0, seed=seed)


def transcribe(models, talker: Talker, since: float) -> str:
    audio, _ = talker.heard_since(since)
    audio16k = resample(audio.astype(np.float32) / 32768, talker.answer_rate or RATE, RATE)
    return models.asr.transcribe(audio16k, beam_size=5).text


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, normalized_words(a), normalized_words(b)).ratio()


async def session(url: str, **params) -> StreamClient:
    client = await StreamClient.connect(url)
    await client.start("relay-speech", {"output_sample_rate": RATE, "max_answer_tokens": 30, **params})
    return client


async def test_kept_prefix_and_its_continuation_are_heard_without_a_seam(server, speech_models, user_voice):
    client = await session(server, verifier_threshold=0.0)   # keep every draft
    async with Talker(client) as talker:
        await talker.room(0.5)
        turn = await one_turn(talker, question(user_voice, "What is the capital of France?"))
        assert turn["done"], "the turn never finished"
        r = turn["record"]
        assert r["kept"] is True and r["prefix"] and r["draft"] == r["prefix"]
        assert r["heard"], r
        prefix, continuation = r["prefix"].split(), r["continuation"].split()
        if continuation:  # no word repeated or lost where the two paths meet
            assert normalized_words(prefix[-1]) != normalized_words(continuation[0]), r
        assert r["heard"].split() == (r["prefix"] + r["continuation"]).split() or r["seam_fragment"], r
        # What arrived is speech, and it says the reply.
        heard = transcribe(speech_models, talker, turn["said"].started_at)
        assert similarity(heard, r["heard"]) >= 0.5, (heard, r["heard"])
        assert turn["speech_end_to_first_audio"] is not None
    await client.close()
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(server + "/metrics")).text
    assert 'latentcast_speech_turns_total{pipeline="relay-speech"}' in metrics
    assert 'measure="speech_end_to_first_audio"' in metrics


async def test_discarded_draft_is_never_heard(server, speech_models, user_voice):
    client = await session(server, verifier_threshold=1.0)   # discard every draft
    async with Talker(client) as talker:
        await talker.room(0.5)
        turn = await one_turn(talker, question(user_voice, "How many legs does a spider have?", seed=1))
        assert turn["done"]
        r = turn["record"]
        # The draft was discarded: what is heard first is the slow path's own opening, made at
        # the pause (one model: greedy from the same cache, so the same words), then its continuation.
        assert r["kept"] is False and r["draft"] and r["prefix"] == r["draft"]
        assert r["heard"].split() == r["reply"].split() and r["reply"].startswith(r["prefix"])
        heard = transcribe(speech_models, talker, turn["said"].started_at)
        assert similarity(heard, r["heard"]) >= 0.5, (heard, r["heard"])
    await client.close()


async def test_barge_in_stops_the_answer_and_the_context_keeps_what_was_played(server, user_voice):
    client = await session(server, verifier_threshold=0.0, max_answer_tokens=150,
                           system_prompt="You are a storyteller. Answer with a long story of at least five sentences.")
    async with Talker(client) as talker:
        await talker.room(0.5)
        ask = question(user_voice, "Tell me a long story about a dragon.", seed=2)
        said = await talker.say(ask.audio, ask.speech_end_s)
        # Interrupt once the continuation plays (the prefix is about 1.5 s of speech).
        heard_enough = await talker.room_until(_heard(talker, said.started_at, seconds=3.0), timeout=180)
        assert heard_enough, "no answer audio"
        playing = (await speech_stats(client))["answering"]  # the turn being answered, before it ends
        assert playing["turn"] == 1 and "dragon" in playing["final_transcript"].lower() and playing["first_audio_at"]
        # No pause inside it: "Stop," alone may be a whole turn, and "Stop" is too short for the VAD to start a turn on.
        interruption = question(user_voice, "Wait a moment please.", seed=3)
        start = int(interruption.speech_start_s * RATE)
        onset = await talker.send(interruption.audio[:start + 320]) - 0.02  # its first voiced chunk left then
        spoken_until = await talker.send(interruption.audio[start + 320:])
        await talker.room(1.0)
        _, arrivals = talker.heard_since(said.started_at)
        # Nothing arrives while the user is still interrupting, bar the last 250 ms before the stop
        # and the chunks already in flight (the lead); the interruption's own answer comes only
        # after its turn is decided, once the user has finished.
        assert not [at for at in arrivals if onset + 0.35 < at < spoken_until]
        stats = await speech_stats(client)
        first = next(t for t in stats["last_turns"] if t["turn"] == 1)
        assert first["interrupted"] and first["barge_in_stop"] is not None
        assert first["barge_in_stop"] <= 0.25, first
        reply_words, heard_words = first["reply"].split(), first["heard"].split()
        assert 0 < len(heard_words) < len(reply_words) and reply_words[:len(heard_words)] == heard_words
        assert stats["context"][1] == {"role": "assistant", "content": first["heard"]}
    await client.close()


def _heard(talker: Talker, since: float, seconds: float):
    async def enough() -> bool:
        audio, _ = talker.heard_since(since)
        return audio.size >= seconds * (talker.answer_rate or RATE)

    return enough


async def test_session_survives_silence_noise_long_speech_and_malformed_audio(server, user_voice):
    client = await session(server, max_utterance_s=4.0)
    async with Talker(client) as talker:
        await talker.room(2.0)                                   # silence (room tone)
        rng = np.random.default_rng(5)
        await talker.send(noise(3 * RATE, rng, 0.05, "pink"))     # loud noise, no voice
        assert (await speech_stats(client))["turns"] == 0
        bad = [b"LC\x01\x02\x10", pack_media(MediaHeader(MediaKind.AUDIO, MediaFormat.PCM_S16LE, 9, None, RATE, 1), b"\x01\x02\x03"),
               pack_media(MediaHeader(MediaKind.AUDIO, MediaFormat.JPEG, 10, None, RATE, 1), b"\x00\x00"),
               pack_media(MediaHeader(MediaKind.AUDIO, MediaFormat.PCM_S16LE, 11, None, 3, 1), b"\x00\x00")]
        for message in bad:
            await client.send_raw(message)
        codes = {(await client.next_error()).code for _ in bad}
        assert codes <= {"bad_header", "unsupported_format"}
        # Long speech, longer than the utterance cap: cut, answered, never refused.
        story = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 4)
        long = speak(user_voice, story, RATE, snr_db=30, lead_s=0.2, tail_s=0.0, seed=6)
        assert long.speech_end_s - long.speech_start_s > 8
        await talker.say(long.audio, long.speech_end_s)

        async def answered() -> bool:
            stats = await speech_stats(client)
            last = (stats.get("last_turns") or [{}])[-1]
            return not stats["answering"] and last.get("heard") and not last.get("interrupted")

        assert await talker.room_until(answered, timeout=240)
        stats = await speech_stats(client)
        assert stats["turns"] >= 2 and any(t["forced_end"] for t in stats["last_turns"])
        errors = []
        while not client.errors.empty():
            errors.append(client.errors.get_nowait().code)
        assert "audio_overflow" not in errors, errors
        # Still a working conversation.
        turn = await one_turn(talker, question(user_voice, "What is two plus two?", seed=7))
        assert turn["done"] and turn["record"]["heard"]
    await client.close()


async def test_the_first_word_of_a_new_users_first_question_is_heard(server, user_voice):
    client = await session(server)
    async with Talker(client) as talker:
        # No room tone before it: the answer starts with the first audio the session gets, and its
        # short first word is lost at the edge of the transcript's audio without the silence the
        # relay puts in front ("The US, please." in 4 of 4 noise seeds, "Yes, please." with it).
        ask = speak(user_voice, "Yes please.", RATE, snr_db=30, lead_s=0.0, tail_s=0.0, seed=8)
        turn = await one_turn(talker, ask)
        assert turn["done"]
        first = (await speech_stats(client))["last_turns"][0]   # the turn that heard the question's start
        assert normalized_words(first["final_transcript"])[:1] == ["yes"], first["final_transcript"]
    await client.close()


def test_chat_session_reads_each_token_once_and_continues_as_a_fresh_read_would(speech_models):
    import numpy as np

    model = speech_models.drafter
    system = {"role": "system", "content": "You are a helpful assistant who talks with people by voice. Reply in one short sentence."}
    history = [system, {"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": "The capital of France is Paris."}]
    question = [*history, {"role": "user", "content": "How many legs does a spider have?"}]
    chat = model.session()
    assert chat.prefill(history)                                                   # read after the last answer
    assert chat.prefill([*history, {"role": "user", "content": "How many legs does a"}], open_end=True)   # while the user speaks
    draft = chat.draft(question, 2)
    # Only the question's last words and the assistant's header were left to read.
    assert len(draft.text.split()) == 2 and 0 < draft.new_tokens <= 12, draft
    # The cache holds what a fresh read of the same tokens computes.
    held = chat.tokens
    fresh_logits = model.run(model.new_cache(len(held)), 0, held, len(held) - 1)[-1]
    assert np.argmax(chat._logits) == np.argmax(fresh_logits)
    assert np.max(np.abs(chat._logits - fresh_logits)) < 0.05 * np.ptp(fresh_logits)
    # Kept: the slow path continues the draft in the same cache, and says what a fresh session says.
    fresh = "".join(model.session().respond(question, "", 30 + len(draft.scores)))
    kept = "".join(chat.respond(question, draft.text, 30))
    assert (draft.text + kept).split() == fresh.split()
    # Discarded: rewound to the assistant's header, it answers as a fresh session does.
    assert "".join(chat.respond(question, "", 30 + len(draft.scores))).split() == fresh.split()
    chat.close()
    assert chat.tokens == []


def test_turn_model_features_are_those_it_was_trained_on(speech_models):
    import numpy as np
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    audio = (0.1 * np.sin(np.arange(40000) * 0.05) + rng.normal(0, 0.01, 40000)).astype(np.float32)
    reference = WhisperFeatureExtractor(chunk_length=8)(np.pad(audio, (128000 - audio.size, 0)), sampling_rate=16000, padding="max_length",
                                                         max_length=128000, truncation=True, do_normalize=True,
                                                         return_tensors="np").input_features[0]
    ours = speech_models.turn.features(audio)
    assert ours.shape == reference.shape == (80, 800) and np.max(np.abs(ours - reference)) < 1e-4


async def test_unknown_voice_is_refused(server):
    client = await StreamClient.connect(server)
    with pytest.raises(StreamClientError) as refused:
        await client.start("relay-speech", {"voice": "nobody"})
    assert refused.value.code == "bad_params" and refused.value.field == "voice"
    await client.close()
