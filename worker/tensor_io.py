"""Moving tensor bytes to and from files without Python-level copies.

A CPU, contiguous tensor is written from (and read into) its own memory
through a ``memoryview``; anything else (other dtype for float32 transport,
non-contiguous, another device) goes through a bounded float32 CPU scratch
buffer, so peak extra memory stays at ``CHUNK_ELEMENTS * 4`` bytes.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import sys
from typing import Any, BinaryIO

from .files import write_all

CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per staged chunk
LITTLE_ENDIAN = sys.byteorder == "little"


def memory_view(tensor: Any) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (keep the tensor alive)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    buffer = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    return memoryview(buffer).cast("B")


_FALLOC_FL_KEEP_SIZE = 1
_fallocate: Any = None


def preallocate(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` of disk for ``fd`` before writing, as numpy's ``tofile`` does.

    Large sequential writes into reserved blocks are markedly faster on ext4,
    and a full disk fails here, before any data is written (``OSError``
    ENOSPC).  Uses Linux ``fallocate(2)`` with ``FALLOC_FL_KEEP_SIZE`` (the
    file size is untouched); a no-op where that is unavailable.
    """
    global _fallocate
    if nbytes <= 0:
        return
    if _fallocate is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            _fallocate = fn
        except (OSError, AttributeError):
            _fallocate = False
    if not _fallocate:
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise OSError(err, os.strerror(err))
        # EOPNOTSUPP, ENOSYS, EINVAL...: the filesystem cannot reserve; just write.


def read_exact_into(raw: io.RawIOBase, view: memoryview) -> None:
    """Fill ``view`` from an unbuffered file; raises ``EOFError`` if the file ends first."""
    while view:
        got = raw.readinto(view)
        if not got:
            raise EOFError("file ended early")
        view = view[got:]


def _direct(tensor: Any, dtype: Any) -> bool:
    return (
        LITTLE_ENDIAN
        and tensor.dtype == dtype
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
    )


def write_tensor_as_f32(raw: BinaryIO, tensor: Any) -> int:
    """Write ``tensor`` as little-endian float32; returns the element count."""
    import torch

    numel = int(tensor.numel())
    if numel == 0:
        return 0
    if _direct(tensor, torch.float32):
        write_all(raw, memory_view(tensor))
        return numel
    flat = tensor.reshape(-1)  # a view when possible, a copy in the source dtype otherwise
    scratch = torch.empty(min(numel, CHUNK_ELEMENTS), dtype=torch.float32)
    for start in range(0, numel, CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        staged = scratch[: chunk.numel()]
        staged.copy_(chunk)
        if not LITTLE_ENDIAN:
            staged = _swap(staged)
        write_all(raw, memory_view(staged))
    return numel


def read_f32_into_tensor(raw: io.RawIOBase, tensor: Any) -> None:
    """Fill ``tensor`` (any float dtype, device, strides) from little-endian float32."""
    import torch

    numel = tensor.numel()
    if numel == 0:
        return
    if _direct(tensor, torch.float32):
        read_exact_into(raw, memory_view(tensor))
        return
    scratch = torch.empty(min(numel, CHUNK_ELEMENTS), dtype=torch.float32)
    if tensor.is_contiguous():
        flat = tensor.view(-1)
        for start in range(0, numel, CHUNK_ELEMENTS):
            staged = scratch[: min(CHUNK_ELEMENTS, numel - start)]
            read_exact_into(raw, memory_view(staged))
            if not LITTLE_ENDIAN:
                staged = _swap(staged)
            with torch.no_grad():
                flat[start : start + staged.numel()].copy_(staged)
        return
    # Non-contiguous (e.g. a transposed view): stage the whole tensor once.
    staged = torch.empty(numel, dtype=torch.float32)
    read_exact_into(raw, memory_view(staged))
    if not LITTLE_ENDIAN:
        staged = _swap(staged)
    with torch.no_grad():
        tensor.copy_(staged.view(tensor.shape))


def _swap(t: Any) -> Any:
    import array

    import torch

    arr = array.array("f")
    arr.frombytes(memory_view(t).tobytes())
    arr.byteswap()
    return torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.float32)
