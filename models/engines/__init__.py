"""Engines: what runs a model component (eager PyTorch, torch.compile, ONNX Runtime, TensorRT).

- `kinds`: the engine kinds, the `--engine` spec and the measured defaults per device;
- `component`: a component behind its engine, built per shape bucket, eager where none is built;
- `buckets`: which engine serves a call (its signature and row cap) and the padding to it;
- `cache`: the on-disk cache of built engines, its keys and integrity check;
- `onnx_runtime`, `compiled`: the two ways an engine is made;
- `diffusion_parts`, `video_parts`: the model components as functions of tensors;
- `threads`: the compute thread count chosen from the machine.

Pipelines never see any of it: `DiffusionModels` and the video models call their components
through here (docs/engines.md).
"""
