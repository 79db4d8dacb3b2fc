"""The on-disk engine cache: an engine is built once and loaded on every later start.

An entry is a folder, one per (component, weights, engine kind, device, bucket), holding the
engine's files and `meta.json`: the full key it was built for and the SHA-256 of every file.
The key names the weights by a fingerprint (a hash of the component's config and every tensor),
and the precision, device and library versions (torch, onnx, onnxruntime). An entry is used only
when its key equals the one asked for and every file hashes as recorded: a stale entry (other
versions) or a corrupt one (a truncated or edited file, unreadable metadata, a session that will
not open) is removed and built again, never used. Builds go to a temporary folder that is
renamed into place, under a file lock, so two processes (stage ranks) never see half an entry.

Where: `$LATENTCAST_ENGINE_CACHE`, else `$LATENTCAST_CACHE_DIR/engines`, else
`~/.cache/latentcast/engines` (`$XDG_CACHE_HOME` respected); `--engine-cache` overrides.
torch.compile keeps its own cache (inductor's, keyed by the graph, the config and the versions)
under `inductor/` in the same folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = 2  # bump when what an entry holds, or how it is made, changes (2: the dynamo exporter on the CPU)
META = "meta.json"
VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt")


def engine_cache_dir() -> Path:
    explicit = os.environ.get("LATENTCAST_ENGINE_CACHE")
    if explicit:
        return Path(explicit)
    root = os.environ.get("LATENTCAST_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentcast"
    return Path(root) / "engines"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def device_name(device: torch.device) -> str:
    """The device as far as a built engine depends on it: compiled GPU code is per architecture."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return device.type


_fingerprints: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a model's class, config and every tensor (names, shapes, dtypes, bytes); computed
    once per loaded model (about a second per GB)."""
    known = _fingerprints.get(module)
    if known is not None:
        return known
    digest = hashlib.sha256(type(module).__qualname__.encode())
    digest.update(json.dumps(_architecture(module), sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    _fingerprints[module] = digest.hexdigest()
    return _fingerprints[module]


def _architecture(module: torch.nn.Module) -> dict:
    """The model's config (diffusers' or transformers'), without the entries that say where it
    was loaded from or by which library version: the same weights get the same fingerprint."""
    config = getattr(module, "config", None)
    if config is None:
        return {}
    values = config.to_dict() if callable(getattr(config, "to_dict", None)) else dict(config)
    return {k: v for k, v in values.items() if not k.startswith("_") and not k.endswith("_version")}


@dataclass(frozen=True)
class EngineKey:
    component: str
    variant: str        # what the component wrapper computes beyond the weights (e.g. which text layer)
    weights: str        # fingerprint of the weights
    kind: str
    device: str
    precision: str
    bucket: str         # Bucket.describe()
    versions: tuple[tuple[str, str], ...]
    format: int = FORMAT

    def folder(self, tag: str) -> Path:
        return Path(self.component) / self.weights[:16] / f"{self.kind}-{self.device}-{self.precision}-{tag}"

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as they read back


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EngineCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else engine_cache_dir()

    def entry(self, key: EngineKey, tag: str) -> Path:
        return self.root / key.folder(tag)

    def open_or_build(self, key: EngineKey, tag: str, build: Callable[[Path], None], open_entry: Callable[[Path], T]) -> tuple[T, bool]:
        """The engine of `key`, opened from its entry, or built into a new entry first; and
        whether it was built now. `build(folder)` writes the engine's files; `open_entry(folder)`
        loads them (it may raise: the entry is then rebuilt once)."""
        entry = self.entry(key, tag)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _locked(entry.with_name(entry.name + ".lock")):
            problem = self.check(entry, key)
            if problem is None:
                try:
                    return open_entry(entry), False
                except Exception as err:  # noqa: BLE001 - an entry that will not open is corrupt: rebuilt below
                    problem = f"it would not open ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            if entry.exists():
                log.warning("engine cache entry %s is %s; building it again", entry, problem)
                shutil.rmtree(entry)
            self._build(entry, key, build)
            return open_entry(entry), True

    def check(self, entry: Path, key: EngineKey) -> str | None:
        """None when the entry is complete and was built for `key`; else what is wrong with it."""
        meta_path = entry / META
        if not meta_path.is_file():
            return "missing" if not entry.exists() else "incomplete (no metadata)"
        try:
            meta = json.loads(meta_path.read_text())
            recorded, files = meta["key"], meta["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "corrupt (unreadable metadata)"
        if recorded != key.as_json():
            changed = sorted(k for k in key.as_json() if recorded.get(k) != key.as_json()[k])
            return f"stale (built for another {', '.join(changed)})"
        present = {str(p.relative_to(entry)) for p in entry.rglob("*") if p.is_file() and p.name != META}
        if present != set(files):
            return "corrupt (files missing or added)"
        for name, digest in files.items():
            if file_digest(entry / name) != digest:
                return f"corrupt ({name} does not match its recorded hash)"
        return None

    def _build(self, entry: Path, key: EngineKey, build: Callable[[Path], None]) -> None:
        for leftover in entry.parent.glob(f".{entry.name}.building-*"):  # a process that died building it (we hold the lock)
            shutil.rmtree(leftover, ignore_errors=True)
        staging = entry.with_name(f".{entry.name}.building-{os.getpid()}")
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            build(staging)
            files = {str(p.relative_to(staging)): file_digest(p) for p in sorted(staging.rglob("*")) if p.is_file()}
            meta = {"key": key.as_json(), "files": files, "build_seconds": round(time.perf_counter() - started, 2)}
            (staging / META).write_text(json.dumps(meta, indent=1))
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX); elsewhere builds are not shared anyway."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per cache is the only supported use there
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
