"""Rolling-KV causal video generation (StreamDiffusionV2 lineage): video-to-video and
text-to-video in chunks over a KV cache of sink frames and a rolling window, per-stream state."""
