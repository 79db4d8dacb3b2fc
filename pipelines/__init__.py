"""Generation pipelines. Each is a small composition of models/ parts with per-stream state."""
