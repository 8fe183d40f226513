"""Predict inputs read from a file: TF Serving's request JSON, ``.npy`` or ``.npz``."""

from __future__ import annotations

import json
import sys
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from model_export.errors import BadInput, ServingError, one_line
from modelfleet.client.rest import _array_from_json, _is_b64
from modelfleet.client.tensors import NDArray


@dataclass(frozen=True)
class RequestInputs:
    """Inputs read from a file, with what TF Serving's request JSON said about the request."""

    arrays: dict[str, NDArray] | NDArray
    row_format: bool = False
    signature_name: str = ""
    from_json: bool = False  # dtypes are JSON's guesses (float64, int64, bytes): cast them for gRPC


def _from_request_json(value: Any, where: str) -> NDArray:
    try:
        return _array_from_json(value, where)
    except ServingError as e:
        raise BadInput(str(e)) from None


def parse_request_json(doc: Any, where: str = "the request") -> RequestInputs:
    """TF Serving's predict request JSON (``{"instances": [...]}`` or ``{"inputs": ...}``) as arrays."""
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        if isinstance(doc, dict) and "instances" in doc:
            raise BadInput(f'{where} has both "instances" and "inputs"; TF Serving accepts one of them')
        raise BadInput(f'{where} has neither "instances" nor "inputs" (TF Serving\'s predict request JSON)')
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise BadInput(f"{where}: signature_name must be a string")
    if "inputs" in doc:
        value = doc["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            arrays: dict[str, NDArray] | NDArray = {
                k: _from_request_json(v, f"{where}, input {k!r}") for k, v in value.items()
            }
        else:
            arrays = _from_request_json(value, where)
        return RequestInputs(arrays, False, signature_name, from_json=True)
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadInput(f'{where}: "instances" must be a non-empty list')
    if all(isinstance(r, dict) and not _is_b64(r) for r in rows):
        names = list(rows[0])
        if any(set(r) != set(names) for r in rows):
            raise BadInput(f'{where}: every "instances" object must have the same input names')
        arrays = {k: _from_request_json([r[k] for r in rows], f"{where}, input {k!r}") for k in names}
    else:
        arrays = _from_request_json(rows, where)
    return RequestInputs(arrays, True, signature_name, from_json=True)


def read_inputs(path: str, stdin: IO[bytes] | None = None) -> RequestInputs:
    """Inputs from a file: TF Serving's request JSON (``-``: read ``stdin``, by default the process's), ``.npy`` (one
    unnamed array) or ``.npz`` (arrays by input name)."""
    suffix = Path(path).suffix.lower()
    try:
        if path == "-":
            raw = (stdin or sys.stdin.buffer).read()
        elif suffix in (".npy", ".npz"):
            return _read_numpy(path, suffix)
        else:
            raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read input file {path!r}: {e.strerror or e}") from None
    where = "stdin" if path == "-" else f"input file {path!r}"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BadInput(f"{where} is not JSON: {e}") from None
    return parse_request_json(doc, where)


# What np.load raises for a file that is not what its name says or was damaged: cut short (a copy or np.savez
# interrupted: EOFError, BadZipFile), a bad CRC (BadZipFile), a damaged np.savez_compressed member (zlib.error), a
# garbled .npy header (SyntaxError, TokenError: numpy parses it as a Python literal), a garbled zip header
# (NotImplementedError: "zip file version").
_DAMAGED = (ValueError, EOFError, SyntaxError, tokenize.TokenError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def _read_numpy(path: str, suffix: str) -> RequestInputs:
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npy":
            if not isinstance(loaded, np.ndarray):
                raise ValueError("not a single array")
            return RequestInputs(loaded)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("one array, not a zip of named arrays (np.save writes .npy, np.savez .npz)")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except _DAMAGED as e:
        reason = one_line(e)
        if reason.startswith("This file contains pickled"):  # numpy's word for "no .npy header": never unpickled here
            reason = "no .npy header (np.save writes .npy, np.savez .npz)"
        raise BadInput(f"input file {path!r} is not a valid {suffix} file: {reason}") from None
    if not arrays:
        raise BadInput(f"input file {path!r} holds no arrays")
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):  # np.load hands back the bytes of a member that is not an .npy file
            raise BadInput(f"input file {path!r} is not a valid {suffix} file: member {name!r} is not an array")
    return RequestInputs(arrays)
