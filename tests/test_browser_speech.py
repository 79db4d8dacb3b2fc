"""Talking to the relay-speech pipeline in the demo page: headless Chromium whose fake microphone
asks a spoken question, against the real server and the real speech models on 127.0.0.1.

The page is used as a person would (pick the pipeline, Start); then the turn's transcript, the
answer arriving in the browser and the conversation on the page are checked. Nothing here
asserts a timing (benchmarks/speech_relay.py measures latency).

Sync Playwright in its own module with a module-scoped browser (a session-scoped one breaks the
asyncio tests that run after it)."""

from __future__ import annotations

import wave

import pytest
from playwright import sync_api

from models.speech.audio import to_int16
from models.speech.stimuli import speak
from models.speech.verifier import normalized_words

from browser import launch_chromium, open_page
from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline

pytestmark = [pytest.mark.usefixtures("loopback_ice"), pytest.mark.timeout(150)]

QUESTION = "What is the capital of France?"
# The microphone's file plays from getUserMedia on: the lead covers the connection coming up.
# Chromium loops the file, so the question comes round again only after the silence after it,
# long enough for the (short) answer to be played and the turn to be recorded.
LEAD_S, SILENCE_S = 1.5, 20.0


@pytest.fixture(scope="module")
def base_url(speech_models):
    from pipelines.relay_speech.pipeline import RelaySpeechPipeline

    pipelines = {"tint": TintPipeline(), "relay-speech": RelaySpeechPipeline(speech_models)}
    with serve_in_thread(make_settings(stats_interval_s=0.5), lambda: pipelines) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory, user_voice):
    question = speak(user_voice, QUESTION, 48000, snr_db=30, lead_s=LEAD_S, tail_s=SILENCE_S)
    microphone = tmp_path_factory.mktemp("media") / "question.wav"
    with wave.open(str(microphone), "wb") as wav:  # the fake microphone reads 16-bit PCM WAV
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(question.sample_rate)
        wav.writeframes(to_int16(question.audio).tobytes())
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-audio-capture={microphone}")
        yield browser
        browser.close()


def received_audio(page) -> dict:
    """The page's inbound audio RTP stats: energy and samples of what the server sent."""
    return page.evaluate("""async () => {
        const stats = await window.latentcast.peer.getStats();
        const audio = [...stats.values()].find(s => s.type === 'inbound-rtp' && s.kind === 'audio');
        return {energy: audio?.totalAudioEnergy ?? 0, samples: audio?.totalSamplesReceived ?? 0};
    }""")


def test_a_person_talks_to_relay_speech_and_hears_the_answer(base_url, browser):
    page, errors = open_page(browser, base_url + "/")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    assert page.input_value("#source") == "camera"

    page.select_option("#pipeline", "relay-speech")
    assert page.input_value("#source") == "microphone" and page.input_value("#transport") == "webrtc"
    assert page.is_disabled("#source option[value=camera]") and page.is_disabled("#transport option[value=websocket]")
    assert page.is_hidden("#fps") and page.is_hidden("#input") and page.is_hidden("#output-video") and page.is_visible("#talk")
    page.click("#params summary")  # "more parameters"
    page.fill("#param-max_answer_tokens", "24")  # a short answer: over before the question comes round again

    page.click("#start")
    page.wait_for_function("window.latentcast.status === 'streaming'", timeout=15_000)
    assert page.evaluate("window.latentcast.transport") == "webrtc"
    silence = received_audio(page)  # nothing has been answered yet: the server sends digital silence

    page.wait_for_function("window.latentcast.turns.length > 0", timeout=60_000)
    turn = page.evaluate("window.latentcast.turns[0]")
    said = normalized_words(turn["final_transcript"] or "")
    assert "capital" in said and "france" in said, turn
    assert turn["heard"] and turn["speech_end_to_first_audio"] is not None, turn

    # The answer reached the browser and plays there: speech energy on the inbound audio, into
    # an unmuted player.
    heard = received_audio(page)
    assert heard["samples"] > silence["samples"] and heard["energy"] > silence["energy"] + 1e-3, (silence, heard)
    assert page.evaluate("(() => { const a = document.getElementById('answer');"
                         " return !a.muted && !a.paused && a.srcObject.getAudioTracks().length === 1; })()")
    page.wait_for_function("window.latentcast.stats.audio.chunks_out > 0", timeout=5_000)

    # The conversation on the page: what was said, what was answered, the draft's fate, the latency.
    shown = page.inner_text("#turns")
    assert "capital" in shown.lower() and "france" in shown.lower(), shown
    assert " ".join(turn["heard"].split()) in " ".join(shown.split()), shown
    if turn["kept"] is not None:
        assert ("draft kept" if turn["kept"] else "draft discarded") in shown, shown
    assert "s from the end of speech to the first audio" in shown, shown

    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=10_000)
    # A video pipeline again: the camera and its figures are back.
    page.select_option("#pipeline", "tint")
    assert page.input_value("#source") == "camera" and not page.is_disabled("#transport option[value=websocket]")
    assert page.is_visible("#fps") and page.is_visible("#input") and page.is_hidden("#talk")
    assert errors == []
    page.close()


def test_without_webrtc_the_page_says_talking_needs_it(base_url, browser):
    page = browser.new_page()
    page.add_init_script("delete window.RTCPeerConnection")
    page.goto(base_url + "/")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    page.select_option("#pipeline", "relay-speech")
    assert page.evaluate("window.latentcast.status") == "unsupported"
    assert "talking needs WebRTC" in page.inner_text("#status") and page.is_disabled("#start")
    page.select_option("#pipeline", "tint")  # video still works over the WebSocket
    assert page.evaluate("window.latentcast.status") == "idle" and page.input_value("#transport") == "websocket"
    assert not page.is_disabled("#start")
    page.close()
