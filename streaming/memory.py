"""Running out of device memory: telling it apart from other failures, and freeing what it left.

An out-of-memory error in one stream's step or state must cost that stream, not the server. The
memory the failed call had claimed is only given back once nothing refers to it any more: the
exception's traceback holds the frames of the call, and their tensors, until it is dropped;
then the caching allocator still keeps the blocks until it is asked to release them (the known
failure of peer projects: after one OOM nothing fits again, see shared/reference/peers-2026.md).
"""

from __future__ import annotations

import torch


def is_out_of_memory(err: BaseException) -> bool:
    """torch raises `torch.OutOfMemoryError` (`torch.cuda.OutOfMemoryError` is the same class) on
    CUDA and in the CPU build alike, which is how the tests raise it."""
    return isinstance(err, torch.OutOfMemoryError)


def release_after_out_of_memory(err: BaseException) -> None:
    """Drop what the failed call still holds through `err`, then hand cached blocks back to the device.

    Dropping the traceback frees the failed call's frames, and their tensors, at once by reference
    counting; a full `gc.collect()` (a fifth of a second in a server this size) is not needed for
    them and would make every failing step that much slower."""
    err.__traceback__ = None
    err.__context__ = err.__cause__ = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
