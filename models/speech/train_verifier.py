"""Train the prefix verifier on examples this script makes itself, and write its weights.

    python -m models.speech.train_verifier --examples 320 --out models/speech/weights/verifier.json

For each example: a question built from templates is spoken by one of the voices (Piper or
espeak-ng) with noise at a random SNR; the fast path transcribes it as the relay does at the
pause (greedy, in a window just longer than the utterance) and an earlier streaming partial (the
audio cut short), then drafts the relay's first chunk (`--draft-words`, 2). The label asks the
slow path whether it would accept that prefix for the question actually asked: the draft's mean
token log-probability given the true question must come within `--tolerance` nats of the slow
model's own greedy words. Examples are kept as JSON lines (`--data`), so training again with
other settings does not redo the audio; each records the models it was made with.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from models.speech.asr import Transcript
from models.speech.llm import Draft, TokenScores
from models.speech.verifier import FEATURES, DraftEvidence, features

# The relay-speech default (pipelines/relay_speech/params.py); each example records the one it used.
SYSTEM_PROMPT = "You are a helpful assistant who talks with people by voice. Reply in English with one or two short, plain sentences."

_TEMPLATES = [
    ("what is the capital of {country}", {"country": ["France", "Japan", "Spain", "Canada", "Italy", "Egypt", "Brazil", "Kenya"]}),
    ("how many legs does a {animal} have", {"animal": ["spider", "dog", "bird", "horse", "crab", "beetle", "snake"]}),
    ("tell me a joke about {topic}", {"topic": ["cats", "computers", "the weather", "pirates", "coffee", "dentists"]}),
    ("what is the weather usually like in {city} in {month}", {"city": ["London", "Paris", "Tokyo", "Cairo", "Oslo"],
                                                                "month": ["winter", "July", "spring", "October"]}),
    ("can you recommend a good {thing} for {who}", {"thing": ["book", "movie", "game", "recipe"],
                                                    "who": ["a rainy day", "children", "a long flight", "beginners"]}),
    ("how do I {task}", {"task": ["boil an egg", "change a tire", "learn to swim", "make bread", "tie a tie", "plant tomatoes"]}),
    ("what does a {job} do all day", {"job": ["nurse", "pilot", "baker", "teacher", "farmer", "lawyer"]}),
    ("why is the {thing} {colour}", {"thing": ["sky", "grass", "sea", "sun"], "colour": ["blue", "green", "red", "yellow"]}),
    ("what is {a} plus {b}", {"a": ["two", "seven", "ten", "twelve"], "b": ["three", "five", "nine", "eleven"]}),
    ("please set a timer for {n} minutes", {"n": ["five", "ten", "twenty", "three"]}),
    ("who wrote {book}", {"book": ["Hamlet", "Pride and Prejudice", "War and Peace", "Don Quixote"]}),
    ("what should I cook for {meal} tonight", {"meal": ["dinner", "a party", "two people", "my kids"]}),
    ("is it healthy to {habit} every day", {"habit": ["drink coffee", "run", "eat eggs", "take a nap"]}),
    ("how far is the {a} from the {b}", {"a": ["moon", "sun", "earth"], "b": ["earth", "sun", "moon"]}),
    ("hello there how are you today", {}),
    ("thank you that was very helpful", {}),
    ("can you say that again more slowly", {}),
    ("what time do {place} usually open", {"place": ["banks", "museums", "bakeries", "libraries"]}),
]


_QUESTION_WORDS = ("what", "how", "why", "who", "can", "is")


def questions(count: int, rng: random.Random) -> list[str]:
    """Sentences written the way Whisper transcribes them (capital, final punctuation), so the
    true question and a correct transcript give the LLM the same prompt."""
    out = []
    for _ in range(count):
        template, slots = rng.choice(_TEMPLATES)
        text = template.format(**{k: rng.choice(v) for k, v in slots.items()})
        out.append(text[0].upper() + text[1:] + ("?" if text.split()[0] in _QUESTION_WORDS else "."))
    return out


def _draft(model, messages: list[dict], words: int) -> Draft:
    """A draft from a fresh conversation (one question, no history)."""
    session = model.session()
    try:
        return session.draft(messages, words)
    finally:
        session.close()


def make_examples(count: int, data_path: Path, seed: int, draft_words: int) -> None:
    """Append `count` examples to `data_path` (JSON lines)."""
    from models.speech.bundle import load_asr, load_chat_models, load_voices
    from models.speech.config import SpeechConfig
    from models.speech.stimuli import speak

    config = SpeechConfig()
    asr, asr_name = load_asr(config)
    drafter, slow, names = load_chat_models(config)
    voices = load_voices(config)
    made_with = {"asr": asr_name, "llm": names["fast_llm"], "engine": type(drafter).__name__, "draft_words": draft_words}
    rng = random.Random(seed)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with data_path.open("a") as out:
        for index, question in enumerate(questions(count, rng)):
            voice = rng.choice(list(voices))
            snr = rng.uniform(5, 35)
            utterance = speak(voices[voice], question, snr_db=snr, lead_s=0.3, tail_s=0.15, seed=rng.randrange(2**31),
                              colour=rng.choice(["white", "pink"]))
            audio = utterance.audio
            spoken = utterance.speech_end_s - utterance.speech_start_s
            cut = int(utterance.sample_rate * (utterance.speech_start_s + rng.uniform(0.5, 0.9) * spoken))
            partial = asr.transcribe(audio[:cut]).text if utterance.speech_end_s - utterance.speech_start_s > 1.0 else None
            transcript = asr.transcribe(audio)
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": transcript.text}]
            draft = _draft(drafter, messages, draft_words)
            truth = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
            reference = _draft(drafter, truth, max(1, len(draft.text.split())))
            draft_lp = slow.continuation_logprob(truth, draft.text) if draft.text else -99.0
            reference_lp = slow.continuation_logprob(truth, reference.text) if reference.text else 0.0
            row = {"question": question, "system_prompt": SYSTEM_PROMPT, "voice": voice, "snr_db": round(snr, 1), "partial": partial,
                   "transcript": transcript.text, "asr_avg_logprob": transcript.avg_logprob, "asr_no_speech_prob": transcript.no_speech_prob,
                   "draft": draft.text, "draft_finished": draft.finished,
                   "scores": [[s.logprob, s.entropy, s.margin] for s in draft.scores],
                   "reference": reference.text, "draft_lp": draft_lp, "reference_lp": reference_lp, "made_with": made_with}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"[{index + 1}/{count}] {time.perf_counter() - started:6.0f}s  {voice:6s} {snr:4.1f} dB  "
                  f"{question!r} -> {transcript.text!r} -> {draft.text!r} ({draft_lp:.2f} vs {reference_lp:.2f})", flush=True)
    for synthesizer in voices.values():
        synthesizer.close()


def evidence_of(row: dict) -> DraftEvidence:
    draft = Draft(row["draft"], tuple(TokenScores(*s) for s in row["scores"]), row["draft_finished"])
    transcript = Transcript(row["transcript"], row["asr_avg_logprob"], row["asr_no_speech_prob"])
    return DraftEvidence(draft, transcript, row["partial"])


def label_of(row: dict, tolerance: float) -> int:
    return int(bool(row["draft"]) and row["draft_lp"] >= row["reference_lp"] - tolerance)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return float("nan")
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def fit(x: np.ndarray, y: np.ndarray, hidden: int, steps: int, weight_decay: float, seed: int) -> dict:
    """A tanh layer and a logistic output, full-batch Adam on class-balanced cross-entropy."""
    import torch

    torch.manual_seed(seed)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / scale, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w1 = (torch.randn(x.shape[1], hidden, dtype=torch.float64) * 0.3).requires_grad_()
    b1 = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
    w2 = (torch.randn(hidden, dtype=torch.float64) * 0.3).requires_grad_()
    b2 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    positive = float(yt.mean().clamp(0.05, 0.95))
    weight = torch.where(yt > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=0.02)
    for _ in range(steps):
        logits = torch.tanh(xt @ w1 + b1) @ w2 + b2
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=weight)
                + weight_decay * (w1.square().sum() + w2.square().sum()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(), "w1": w1.detach().tolist(),
            "b1": b1.detach().tolist(), "w2": w2.detach().tolist(), "b2": float(b2.detach())}


def train(data_path: Path, out: Path, tolerance: float, hidden: int, steps: int, weight_decay: float, seed: int) -> dict:
    from models.speech.verifier import PrefixVerifier

    rows = [json.loads(line) for line in data_path.read_text().splitlines() if line.strip()]
    x = np.stack([features(evidence_of(r)) for r in rows])
    y = np.array([label_of(r, tolerance) for r in rows], np.float64)
    # Held-out estimate: 5 folds, each fitted on the other four.
    order = np.random.default_rng(seed).permutation(len(rows))
    held = np.zeros(len(rows))
    for fold in range(5):
        test = order[fold::5]
        train_idx = np.setdiff1d(order, test)
        held[test] = PrefixVerifier(fit(x[train_idx], y[train_idx], hidden, steps, weight_decay, seed)).probabilities(x[test])
    weights = fit(x, y, hidden, steps, weight_decay, seed)
    keep = held >= 0.5
    report = {"examples": len(rows), "positive_rate": round(float(y.mean()), 3), "heldout_auroc": round(auroc(held, y), 3),
              "heldout_keep_rate": round(float(keep.mean()), 3),
              "heldout_precision": round(float(y[keep].mean()), 3) if keep.any() else None,
              "heldout_accuracy": round(float(np.mean(keep == (y > 0.5))), 3),
              "label": f"draft mean log-prob given the true question >= reference - {tolerance} nats",
              "hidden": hidden, "steps": steps, "weight_decay": weight_decay, "seed": seed}
    weights["training"] = report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(weights, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=320, help="new examples to make (0: train on the data file as it is)")
    parser.add_argument("--data", type=Path, default=Path("models/speech/weights/verifier_examples.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("models/speech/weights/verifier.json"))
    parser.add_argument("--tolerance", type=float, default=0.75)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draft-words", type=int, default=2, help="words per draft (the relay's draft_words)")
    args = parser.parse_args(argv)
    if args.examples:
        make_examples(args.examples, args.data, args.seed, args.draft_words)
    print(json.dumps(train(args.data, args.out, args.tolerance, args.hidden, args.steps, args.weight_decay, args.seed), indent=1))


if __name__ == "__main__":
    main()
