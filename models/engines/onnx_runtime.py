"""ONNX engines: a component exported once with torch's ONNX exporter, run by ONNX Runtime.

Which exporter, measured on the tiny UNet with ONNX Runtime's CPU provider: torch's dynamo
exporter at opset 23, whose graphs keep attention as one `Attention` op, ran 1.05x (256²) and
1.16x (512²) faster than the TorchScript exporter's opset-18 graphs, which spell attention out in
matmuls and a softmax; it takes ~10 s to export the UNet against ~1 s. On NVIDIA the graph goes to
the CUDA and TensorRT providers, and there the TorchScript exporter's opset 18 is what those
providers are known to take (TensorRT-based peers export the same way); unmeasured until a GPU run.
Only the row count is left dynamic: ONNX Runtime's CPU and CUDA providers run any count as fast as
a static graph (measured), so one export per picture size serves every stream batch. TensorRT
engines are built by ONNX Runtime's TensorRT provider from the same file, for a profile of 1..cap
rows, and kept in its own engine cache next to ours.

On CUDA, inputs and outputs stay on the GPU (IO binding on torch's own stream); on the CPU they
pass as numpy views, without copies.

The dynamo exporter runs in a child process. While it traces, torch.export replaces
`torch.nn.Module.__call__` for the whole process, not the tracing thread: a stream's step running
on another thread at that moment (a background build while serving, another pipeline's worker
warming up) would be traced into the export, or fail inside it, and the export with it. The child
takes the module and example inputs through a file and writes the ONNX file; nothing in the
server is traced. (The TorchScript exporter used for CUDA keeps its tracing state per thread.)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.engines.buckets import Bucket
from models.engines.kinds import EngineKind

log = logging.getLogger(__name__)

OPSET = {"cpu": 23, "cuda": 18}
MODEL_FILE = "model.onnx"
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}


def available_providers(kind: EngineKind, device: torch.device) -> list[str]:
    """The ONNX Runtime providers that run `kind` on `device`, best first; [] when none is installed."""
    import onnxruntime

    installed = set(onnxruntime.get_available_providers())
    if device.type == "cpu":
        wanted = ["CPUExecutionProvider"] if kind is EngineKind.ONNX else []
    elif kind is EngineKind.TENSORRT:
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if "TensorrtExecutionProvider" in installed else []
    else:
        wanted = ["CUDAExecutionProvider"]
    return [p for p in wanted if p in installed]


def export_onnx(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], folder: Path, output_count: int, device: torch.device) -> None:
    """Write `module` called on `examples` as `folder/model.onnx` (weights in files beside it), with
    a dynamic first dimension on every input and output; the exporter is chosen by `device`, and
    the dynamo exporter runs in a child process (see the module's docstring)."""
    if device.type == "cpu":
        _export_in_child(module, examples, folder, output_count)
    else:
        _export(module, examples, folder, output_count, device)


def _export_in_child(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], folder: Path, output_count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="latentcast-export-") as scratch:
        job = Path(scratch) / "job.pt"
        torch.save({"module": _without_hooks(module), "examples": examples, "output_count": output_count}, job)
        done = subprocess.run([sys.executable, "-m", __name__, str(job), str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        log.debug("the ONNX export's process said:\n%s", done.stderr)
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        cause = (errors or lines or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the ONNX export failed in its process: {cause}")


def _without_hooks(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` that pickles. Forward hooks are this process's state, often closures
    (transformers installs its output-capturing hooks on a model's first call, and reinstalls
    them in the child on its first call once the flag saying they are there is cleared)."""
    clone = copy.deepcopy(module)
    for part in clone.modules():
        for hooks in (part._forward_hooks, part._forward_pre_hooks, part._forward_hooks_with_kwargs,
                      part._forward_hooks_always_called, part._forward_pre_hooks_with_kwargs):
            hooks.clear()
        if getattr(part, "_output_capturing_hooks_installed", False):
            part._output_capturing_hooks_installed = False
    return clone


def _readmit_transformers_models(module: torch.nn.Module) -> None:
    """transformers records what each model can output (hidden states, for the penultimate layer)
    per instance, when the instance is constructed: an unpickled one is not, so record it here."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    for part in module.modules():
        if hasattr(part, "_can_record_outputs"):
            _CAN_RECORD_REGISTRY[part] = part._can_record_outputs


def _export(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], folder: Path, output_count: int, device: torch.device) -> None:
    inputs = [f"input_{i}" for i in range(len(examples))]
    outputs = [f"output_{i}" for i in range(output_count)]
    path = str(folder / MODEL_FILE)
    with torch.no_grad(), warnings.catch_warnings(), _quiet(EXPORTER_LOGGERS):
        # The exporters warn about every Python branch on a shape; the shapes here are the bucket's.
        warnings.simplefilter("ignore")
        if device.type == "cpu":
            rows = torch.export.Dim("rows")
            torch.onnx.export(module, examples, path, dynamo=True, opset_version=OPSET["cpu"], input_names=inputs,
                              output_names=outputs, dynamic_shapes=tuple({0: rows} for _ in examples), verbose=False)
        else:
            torch.onnx.export(module, examples, path, dynamo=False, opset_version=OPSET["cuda"], input_names=inputs,
                              output_names=outputs, dynamic_axes={name: {0: "rows"} for name in inputs + outputs},
                              do_constant_folding=True)


# What the exporters log at INFO and WARNING for every export (graph passes, optional torchvision
# ops): a server's log would read like a compiler's.
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class OnnxEngine:
    """One ONNX Runtime session for one bucket of a component."""

    def __init__(self, folder: Path, kind: EngineKind, device: torch.device, threads: int, bucket: Bucket,
                 output_shapes: list[tuple[tuple[int, ...], torch.dtype]], tensorrt_cache: Path | None = None):
        import onnxruntime

        self.device = device
        self.output_shapes = output_shapes
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers and the like are noise here
        self.session = onnxruntime.InferenceSession(
            str(folder / MODEL_FILE), options, providers=self._providers(kind, device, bucket, tensorrt_cache))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _providers(self, kind: EngineKind, device: torch.device, bucket: Bucket, tensorrt_cache: Path | None) -> list:
        if device.type == "cpu":
            return ["CPUExecutionProvider"]
        stream = str(torch.cuda.current_stream(device).cuda_stream)
        cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0, "has_user_compute_stream": "1",
                                          "user_compute_stream": stream, "cudnn_conv_algo_search": "HEURISTIC"})
        if kind is not EngineKind.TENSORRT:
            return [cuda]
        shapes = [",".join(f"input_{i}:{'x'.join(map(str, (rows, *shape)))}" for i, (shape, _) in enumerate(bucket.signature))
                  for rows in (1, bucket.cap)]
        assert tensorrt_cache is not None
        tensorrt_cache.mkdir(parents=True, exist_ok=True)
        options = {"device_id": device.index or 0, "trt_fp16_enable": "1", "trt_engine_cache_enable": "1",
                   "trt_engine_cache_path": str(tensorrt_cache), "trt_timing_cache_enable": "1",
                   "trt_timing_cache_path": str(tensorrt_cache), "trt_profile_min_shapes": shapes[0],
                   "trt_profile_opt_shapes": shapes[1], "trt_profile_max_shapes": shapes[1],
                   "has_user_compute_stream": "1", "user_compute_stream": stream}
        return [("TensorrtExecutionProvider", options), cuda]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cpu":
            feed = {name: t.detach().contiguous().numpy() for name, t in zip(self.inputs, inputs)}
            return tuple(torch.from_numpy(out) for out in self.session.run(self.outputs, feed))
        return self._run_bound(inputs)

    def _run_bound(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Inputs and outputs bound in place on the GPU: nothing is copied through the host."""
        rows = inputs[0].shape[0]
        binding = self.session.io_binding()
        index = self.device.index or 0
        inputs = tuple(t.detach().contiguous() for t in inputs)
        for name, t in zip(self.inputs, inputs):
            binding.bind_input(name, "cuda", index, _NUMPY[t.dtype], tuple(t.shape), t.data_ptr())
        outputs = tuple(torch.empty((rows, *shape), dtype=dtype, device=self.device) for shape, dtype in self.output_shapes)
        for name, t in zip(self.outputs, outputs):
            binding.bind_output(name, "cuda", index, _NUMPY[t.dtype], tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs


if __name__ == "__main__":  # the child of _export_in_child: python -m models.engines.onnx_runtime JOB FOLDER
    torch.set_num_threads(1)
    job = torch.load(sys.argv[1], weights_only=False)
    _readmit_transformers_models(job["module"])
    _export(job["module"], job["examples"], Path(sys.argv[2]), job["output_count"], torch.device("cpu"))
