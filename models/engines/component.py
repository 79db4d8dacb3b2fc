"""One model component behind its engine, and the builds that keep live streams from stalling.

A `ComponentEngine` is called like the eager module it wraps (tensors in, a tensor or a tuple
out, rows first). It finds the bucket of the call (`buckets.py`); with an engine built for that
bucket the call runs there (padded to the bucket's rows for static-row engines), otherwise eager.

When there is no engine yet depends on the engine's build policy:
- `NOW` (the default: render, benchmarks, tests, a server's warm-up): the engine is built (or
  loaded from the disk cache) there and then, with a progress line, and the call runs on it;
- `BACKGROUND` (a serving worker's engines after warm-up): the call runs eager and one builder
  thread builds the engine; later calls use it once it is there. torch.compile engines are never
  built in the background (dynamo and CUDA graphs belong to the thread that runs them): their
  missing shapes stay eager, and warm-up builds the caps the scheduler's batches need
  (`build_for_streams`). A worker finds its engines by loading its pipelines inside
  `collect_engines()`.

A build that fails is logged and its bucket runs eager from then on: an engine is an
optimisation, never a reason to drop a frame.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from models.engines.buckets import Bucket, Signature, cap_for, caps_up_to, example_rows, pad_rows, rows_of, signature_of
from models.engines.cache import EngineCache, EngineKey, device_name, fingerprint, library_versions
from models.engines.compiled import CompiledEngine
from models.engines.kinds import EngineKind
from models.engines.onnx_runtime import OnnxEngine, export_onnx

log = logging.getLogger(__name__)

Engine = Callable[..., tuple[torch.Tensor, ...]]


class BuildPolicy(Enum):
    NOW = "now"
    BACKGROUND = "background"


_collecting = threading.local()
_building = threading.local()


def building() -> bool:
    """Whether this thread is building an engine: running a component on a made-up example, whose
    side effects (a video transformer's cache writes) must not happen."""
    return getattr(_building, "active", False)


@contextlib.contextmanager
def collect_engines() -> Iterator[list[ComponentEngine]]:
    """The engines (other than eager) created by this thread inside the block, in order."""
    engines: list[ComponentEngine] = []
    outer = getattr(_collecting, "engines", None)
    _collecting.engines = engines
    try:
        yield engines
    finally:
        _collecting.engines = outer
        if outer is not None:
            outer.extend(engines)


@dataclass
class _Seen:
    """Calls of one signature so far: a one-row example (to build engines from) and the row range."""

    example: tuple[torch.Tensor, ...]
    low: int
    high: int


class ComponentEngine:
    def __init__(self, component: str, module: torch.nn.Module, kind: EngineKind, device: torch.device, dtype: torch.dtype, *,
                 weights: torch.nn.Module, cache: EngineCache, variant: str = "", rows_scale_with_streams: bool = True):
        """`module`: the component as a function of tensors (rows first). `weights`: the model
        whose fingerprint keys the disk cache; `variant`: what `module` computes beyond them.
        `rows_scale_with_streams`: whether a batch of S streams has S times the rows of one
        (UNet, VAE), or not (text encoders: prompts are encoded per stream)."""
        self.component = component
        self.module = module
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.weights = weights
        self.cache = cache
        self.variant = variant
        self.rows_scale_with_streams = rows_scale_with_streams
        self._built: dict[Bucket, Engine] = {}
        self._failed: set[Bucket] = set()
        self._waiting: set[Bucket] = set()   # missing while serving: queued, or announced as eager
        self._seen: dict[Signature, _Seen] = {}
        self._lock = threading.Lock()
        self._compiled = CompiledEngine(module, device, cache.root) if kind is EngineKind.COMPILE else None
        self.build_policy = BuildPolicy.NOW
        collector = getattr(_collecting, "engines", None)
        if collector is not None and kind is not EngineKind.EAGER:
            collector.append(self)

    def __repr__(self) -> str:
        return f"ComponentEngine({self.component}, {self.kind.value}, {len(self._built)} built)"

    @property
    def built(self) -> list[Bucket]:
        return list(self._built)

    def __call__(self, *inputs: torch.Tensor):
        if self.kind is EngineKind.EAGER:
            return self.module(*inputs)
        signature, rows = signature_of(inputs), rows_of(inputs)
        self._note(signature, rows, inputs)
        bucket = self.bucket_for(signature, rows)
        engine = self._built.get(bucket)
        if engine is None and bucket not in self._failed:
            engine = self._build(bucket, inputs) if self.build_policy is BuildPolicy.NOW else self._later(bucket)
        if engine is None:
            return self.module(*inputs)
        if self.kind.static_rows:  # the shape it was compiled for: padded rows, and contiguous (dynamo guards on strides)
            inputs = tuple(t.contiguous() for t in pad_rows(inputs, bucket.cap or rows))
        with torch.no_grad():
            outs = engine(*inputs)
        if self.kind.static_rows:
            outs = tuple(o[:rows] for o in outs)
        return outs[0] if len(outs) == 1 else outs

    def bucket_for(self, signature: Signature, rows: int) -> Bucket:
        return Bucket(signature, None if self.kind is EngineKind.ONNX else cap_for(rows))

    def _note(self, signature: Signature, rows: int, inputs: tuple[torch.Tensor, ...]) -> None:
        seen = self._seen.get(signature)
        if seen is None:
            self._seen[signature] = _Seen(tuple(t[:1].clone() for t in inputs), rows, rows)
        else:
            seen.low, seen.high = min(seen.low, rows), max(seen.high, rows)

    def _later(self, bucket: Bucket) -> None:
        """Serving: this call runs eager; an ONNX engine for its bucket is built in the background."""
        if bucket in self._waiting:
            return None
        self._waiting.add(bucket)
        if self.kind is EngineKind.COMPILE:
            log.info("%s: no compiled engine for %s; that shape runs eager", self.component, bucket.describe())
            return None
        log.info("%s: no %s engine for %s yet; eager until it is built in the background", self.component, self.kind.value,
                 bucket.describe())
        _builder().put((self, bucket))
        return None

    def needed_buckets(self, max_streams: int) -> list[Bucket]:
        """The buckets that serve every call seen so far, and the same calls for up to
        `max_streams` streams batched together."""
        buckets = []
        for signature, seen in self._seen.items():
            if self.kind is EngineKind.ONNX:
                buckets.append(Bucket(signature, None))
                continue
            high = seen.high * (max_streams if self.rows_scale_with_streams else 1)
            buckets += [Bucket(signature, cap) for cap in caps_up_to(seen.low, high)]
        return [b for b in buckets if b not in self._built and b not in self._failed]

    def _build(self, bucket: Bucket, inputs: tuple[torch.Tensor, ...] | None = None, progress: str = "") -> Engine | None:
        """Build (or load) the engine of `bucket`; None when that fails (the bucket runs eager)."""
        with self._lock, torch.no_grad():
            if bucket in self._built:
                return self._built[bucket]
            source = inputs if inputs is not None else self._seen[bucket.signature].example
            # An export at one row could fold the row count into the graph: at least two.
            examples = example_rows(source, bucket.cap or max(2, rows_of(source)))
            log.info("%s: %s engine for %s%s: loading or building it", self.component, self.kind.value, bucket.describe(), progress)
            started = time.perf_counter()
            _building.active = True
            try:
                engine, built = self._make(bucket, examples)
            except Exception as err:  # noqa: BLE001 - the bucket runs eager; the message says why
                log.warning("%s: the %s engine for %s could not be built (%s: %s); that shape runs eager", self.component,
                            self.kind.value, bucket.describe(), type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                self._failed.add(bucket)
                return None
            finally:
                _building.active = False
            log.info("%s: %s engine for %s %s in %.1f s", self.component, self.kind.value, bucket.describe(),
                     "built" if built else "loaded from the cache", time.perf_counter() - started)
            self._built[bucket] = engine
            return engine

    def _make(self, bucket: Bucket, examples: tuple[torch.Tensor, ...]) -> tuple[Engine, bool]:
        if self._compiled is not None:
            self._compiled(*examples)  # dynamo compiles this shape now (or takes it from inductor's cache)
            return self._compiled, True
        outs = self.module(*examples)
        outs = outs if isinstance(outs, tuple) else (outs,)
        output_shapes = [(tuple(o.shape[1:]), o.dtype) for o in outs]
        # The export's rows are dynamic, so one export serves every cap of a TensorRT engine too.
        export = Bucket(bucket.signature, None)
        key = EngineKey(self.component, self.variant, fingerprint(self.weights), self.kind.value, device_name(self.device),
                        str(self.dtype).removeprefix("torch."), export.describe(), tuple(sorted(library_versions().items())))
        tensorrt_cache = self.cache.root / "tensorrt" / key.folder(bucket.tag()) if self.kind is EngineKind.TENSORRT else None

        def open_entry(folder):
            return OnnxEngine(folder, self.kind, self.device, torch.get_num_threads(), bucket, output_shapes, tensorrt_cache)

        def build(folder):
            export_onnx(self.module, examples, folder, len(outs), self.device)

        return self.cache.open_or_build(key, export.tag(), build, open_entry)


def build_for_streams(engines: list[ComponentEngine], max_streams: int) -> int:
    """Build every engine the calls seen so far need, for batches of up to `max_streams` streams
    (a serving worker calls this after warm-up), with a progress line each; returns how many
    engines `engines` now have."""
    work = [(engine, bucket) for engine in engines for bucket in engine.needed_buckets(max_streams)]
    for index, (engine, bucket) in enumerate(work, start=1):
        engine._build(bucket, progress=f" [{index}/{len(work)}]")
    return sum(len(engine.built) for engine in engines)


_queue: queue.Queue[tuple[ComponentEngine, Bucket]] | None = None


def _builder() -> queue.Queue[tuple[ComponentEngine, Bucket]]:
    """The one background builder (exports are process-global in torch: one at a time)."""
    global _queue
    if _queue is None:
        _queue = queue.Queue()
        threading.Thread(target=_build_forever, args=(_queue,), name="engine-builder", daemon=True).start()
    return _queue


def _build_forever(jobs: queue.Queue[tuple[ComponentEngine, Bucket]]) -> None:
    while True:
        engine, bucket = jobs.get()
        engine._build(bucket)
