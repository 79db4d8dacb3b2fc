"""The causal video model set: Wan2.1 DiT with a rolling KV cache, streaming VAE, text encoder,
their presets and loading. Pipelines reach it through `VideoModels` (models/video/bundle.py)."""
