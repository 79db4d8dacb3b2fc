"""Speech components of the relay pipeline, each behind a small interface with a default whose
weights ship inside a package: VAD, ASR, LLM, TTS and the prefix verifier (docs/speech.md)."""
