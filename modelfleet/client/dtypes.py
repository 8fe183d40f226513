"""TensorFlow's DataType enum and the numpy dtypes the client maps it to."""

from __future__ import annotations

from typing import Any

import numpy as np

from model_export.errors import ModelfleetError

# tensorflow/core/framework/types.proto: enum -> (DataType name, numpy dtype name).
_DTYPES: dict[int, tuple[str, str]] = {
    1: ("DT_FLOAT", "float32"),
    2: ("DT_DOUBLE", "float64"),
    3: ("DT_INT32", "int32"),
    4: ("DT_UINT8", "uint8"),
    5: ("DT_INT16", "int16"),
    6: ("DT_INT8", "int8"),
    7: ("DT_STRING", "string"),
    8: ("DT_COMPLEX64", "complex64"),
    9: ("DT_INT64", "int64"),
    10: ("DT_BOOL", "bool"),
    14: ("DT_BFLOAT16", "bfloat16"),
    17: ("DT_UINT16", "uint16"),
    18: ("DT_COMPLEX128", "complex128"),
    19: ("DT_HALF", "float16"),
    22: ("DT_UINT32", "uint32"),
    23: ("DT_UINT64", "uint64"),
}
_DT_STRING = 7
_ENUM_BY_NUMPY = {name: num for num, (_, name) in _DTYPES.items() if name != "string"}
_ENUM_BY_DT_NAME = {dt: num for num, (dt, _) in _DTYPES.items()}


def _numpy_dtype(enum: int) -> np.dtype[Any]:
    entry = _DTYPES.get(enum)
    if entry is None:
        raise ModelfleetError(f"tensor dtype {enum} is not supported by this client")
    if entry[1] == "bfloat16":
        import ml_dtypes  # TensorFlow's dependency; only bfloat16 needs it

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(entry[1])
