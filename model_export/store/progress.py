"""Byte progress of one file's transfer, as the backends see it, turned into ticks a progress bar can take.

What the backends see is not what a bar wants: the HTTP layer reads a request body in small blocks, a retried
request reads its body again from the start, and boto3's downloads report a negative count when they retry a GET
(s3transfer takes back the bytes of the lost attempt). :class:`Meter` takes those raw, signed counts and hands on only
forward steps of at least :data:`STEP` bytes (fewer calls, whatever the block size), never past the highest count the
transfer has reached: bytes sent again after a retry move nothing until they pass what was already shown, so the
ticks of a file never add up to more than its size.
"""

from __future__ import annotations

import io
import threading
from typing import IO, Any

from model_export.store.base import ProgressFn

# The smallest forward step handed on (the last one of a file may be smaller): a bar of a multi-GB file still moves
# every MiB, and a tick costs a lock and a bar update, not one per block (8-256 KiB) the SDKs read or write.
STEP = 1024 * 1024


class Meter:
    """Signed raw byte counts in (:meth:`add`, from any thread), forward ticks of at least ``step`` bytes out."""

    def __init__(self, progress: ProgressFn | None, step: int = STEP) -> None:
        self._progress = progress
        self._step = max(1, step)
        self._at = 0  # the raw count: bytes the transfer holds now (drops when a retry takes bytes back)
        self._told = 0  # bytes ticked so far: the highest count reached, in steps
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._at += n
            step = self._at - self._told
            if step < self._step:
                return
            self._told = self._at
        self._progress(step)

    def finish(self, total: int) -> None:
        """Tick what is left up to ``total``, the file's size: the transfer is done (also when the server already had
        the object and the bytes were never all sent again)."""
        if self._progress is None:
            return
        with self._lock:
            step = total - self._told
            if step <= 0:
                return
            self._told = total
            self._at = max(self._at, total)
        self._progress(step)


class MeteredBody(io.BytesIO):
    """A request body that tells ``meter`` of every byte the HTTP layer reads from it, and takes them back when the
    SDK rewinds it to send it again (botocore's retry seeks to 0). A seek forward counts nothing: botocore measures
    a body by seeking to its end and back. Its buffer is the ``bytes`` given, not a copy."""

    def __init__(self, data: bytes, meter: Meter) -> None:
        super().__init__(data)
        self._meter = meter
        self._counted = 0  # bytes [0, _counted) were read since the last rewind past them

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self._read_to(self.tell())
        return data

    def readinto(self, buffer: Any, /) -> int:
        n = super().readinto(buffer)
        self._read_to(self.tell())
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        at = super().seek(offset, whence)
        if at < self._counted:  # to be read (and counted) again
            self._meter.add(at - self._counted)
            self._counted = at
        return at

    def _read_to(self, at: int) -> None:
        if at > self._counted:
            self._meter.add(at - self._counted)
            self._counted = at


class MeteredWriter:
    """A binary file being downloaded into: what is written is told to ``meter``. Only what the SDKs' downloads call
    (``write``, and ``tell``/``seek``/``flush``); a seek back (a download restarting) takes the bytes back."""

    def __init__(self, fh: IO[bytes], meter: Meter) -> None:
        self._fh = fh
        self._meter = meter
        self._counted = 0  # bytes [0, _counted) were written since the last seek back past them
        self.name = fh.name

    def write(self, data: bytes) -> int:
        n = self._fh.write(data)
        at = self._fh.tell()
        if at > self._counted:
            self._meter.add(at - self._counted)
            self._counted = at
        return n

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        at = self._fh.seek(offset, whence)
        if at < self._counted:  # to be written (and counted) again
            self._meter.add(at - self._counted)
            self._counted = at
        return at

    def flush(self) -> None:
        self._fh.flush()
