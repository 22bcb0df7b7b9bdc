"""Moving tensor bytes to and from files without Python-level copies.

A CPU, contiguous tensor is written from (and read into) its own memory
through a ``memoryview``; anything else (other dtype for float32 transport,
non-contiguous, another device) goes through a bounded float32 CPU scratch
buffer, so peak extra memory stays at ``CHUNK_ELEMENTS * 4`` bytes.  A
non-contiguous tensor (a transposed weight, a channels_last convolution) is
moved in :func:`pieces`: views of at most ``CHUNK_ELEMENTS`` elements in its
logical row-major order, never flattened whole (``reshape(-1)`` of such a
tensor is a full copy).
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import sys
from collections.abc import Iterator
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


def pieces(tensor: Any, max_elements: int) -> Iterator[Any]:
    """Views of ``tensor`` covering it in logical row-major order, each of at most
    ``max_elements`` elements (no copy: ``narrow`` and ``select`` only).

    Whole leading-dimension slices are taken when one index of the first
    dimension fits, else each index is split further; a 1-D tensor is cut
    into runs.  Raises ``ValueError`` for ``max_elements < 1``.
    """
    if max_elements < 1:
        raise ValueError(f"max_elements must be at least 1, got {max_elements}")
    numel = int(tensor.numel())
    if numel == 0:
        return
    if numel <= max_elements:
        yield tensor
        return
    if tensor.dim() == 1:
        for start in range(0, numel, max_elements):
            yield tensor.narrow(0, start, min(max_elements, numel - start))
        return
    rows = int(tensor.shape[0])
    per_row = numel // rows
    if per_row <= max_elements:
        step = max_elements // per_row
        for start in range(0, rows, step):
            yield tensor.narrow(0, start, min(step, rows - start))
        return
    for row in range(rows):
        yield from pieces(tensor.select(0, row), max_elements)


COPY_BLOCK = 16
"""Columns copied at a time between a column-major 2-D piece (a transposed weight) and
its row-major staging: one 64-byte line per row stays in cache, instead of every element
of a row landing on its own line (4x faster on a transposed 4096x4096)."""


def _copy(dst: Any, src: Any) -> None:
    """``dst.copy_(src)``; between a row-major and a column-major 2-D tensor (a transposed
    weight), in blocks of :data:`COPY_BLOCK` columns."""
    width = int(dst.shape[-1]) if dst.dim() == 2 else 0
    if width <= COPY_BLOCK or (dst.stride(0) != 1 and src.stride(0) != 1):
        dst.copy_(src)
        return
    for start in range(0, width, COPY_BLOCK):
        size = min(COPY_BLOCK, width - start)
        dst.narrow(1, start, size).copy_(src.narrow(1, start, size))


def write_tensor_as_f32(raw: BinaryIO, tensor: Any) -> int:
    """Write ``tensor`` as little-endian float32 in logical row-major order; returns the
    element count.  Extra memory: at most ``CHUNK_ELEMENTS`` float32."""
    import torch

    numel = int(tensor.numel())
    if numel == 0:
        return 0
    if _direct(tensor, torch.float32):
        write_all(raw, memory_view(tensor))
        return numel
    source = tensor.view(-1) if tensor.is_contiguous() else tensor
    scratch = torch.empty(min(numel, CHUNK_ELEMENTS), dtype=torch.float32)
    for piece in pieces(source, CHUNK_ELEMENTS):
        staged = scratch[: piece.numel()].view(piece.shape)
        with torch.no_grad():
            _copy(staged, piece)
        if not LITTLE_ENDIAN:
            staged = _swap(staged)
        write_all(raw, memory_view(staged))
    return numel


def read_f32_into_tensor(raw: io.RawIOBase, tensor: Any) -> None:
    """Fill ``tensor`` (any float dtype, device, strides) from little-endian float32 in its
    logical row-major order.  Extra memory: at most ``CHUNK_ELEMENTS`` float32."""
    import torch

    numel = tensor.numel()
    if numel == 0:
        return
    if _direct(tensor, torch.float32):
        read_exact_into(raw, memory_view(tensor))
        return
    target = tensor.view(-1) if tensor.is_contiguous() else tensor
    scratch = torch.empty(min(numel, CHUNK_ELEMENTS), dtype=torch.float32)
    for piece in pieces(target, CHUNK_ELEMENTS):
        staged = scratch[: piece.numel()]
        read_exact_into(raw, memory_view(staged))
        if not LITTLE_ENDIAN:
            staged = _swap(staged)
        with torch.no_grad():
            _copy(piece, staged.view(piece.shape))


def _swap(t: Any) -> Any:
    import array

    import torch

    arr = array.array("f")
    arr.frombytes(memory_view(t).tobytes())
    arr.byteswap()
    return torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.float32)
