"""A model's serving signature: input and output tensor specs, and the compatibility rule ``publish`` enforces.

Plain data with no TensorFlow: :mod:`model_export.savedmodel` reads it from ``saved_model.pb``, the manifest stores it,
and the predict client reads it from TF Serving's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

# The SavedModel tag and signature TF Serving serves by default (what export writes and publish requires).
SERVING_TAG = "serve"
SERVING_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def to_json(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}

    def accepts(self, other: TensorSpec) -> bool:
        """Whether a client that fed ``self`` can feed ``other`` unchanged (same dtype, compatible dims)."""
        if self.dtype != other.dtype:
            return False
        if self.shape is None or other.shape is None:
            return True
        if len(self.shape) != len(other.shape):
            return False
        return all(a == b or -1 in (a, b) for a, b in zip(self.shape, other.shape, strict=True))


@dataclass(frozen=True)
class Signature:
    method: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "inputs": {k: v.to_json() for k, v in sorted(self.inputs.items())},
            "outputs": {k: v.to_json() for k, v in sorted(self.outputs.items())},
        }

    @classmethod
    def from_json(cls, data: object) -> Signature:
        """The inverse of :meth:`to_json`. ``ValueError`` names the first field that is missing or of the wrong type
        (explicit checks, not asserts, so they hold under ``python -O`` too; nothing is coerced)."""

        def wrong(where: str, want: str, got: object) -> ValueError:
            return ValueError(f"signature{where}: expected {want}, got {type(got).__name__}")

        def specs(part: str, raw: object) -> dict[str, TensorSpec]:
            if not isinstance(raw, dict):
                raise wrong(f".{part}", "an object", raw)
            out: dict[str, TensorSpec] = {}
            for name, spec in raw.items():
                where = f".{part}[{name!r}]"
                if not isinstance(name, str) or not isinstance(spec, dict):
                    raise wrong(where, "an object", spec)
                dtype, shape = spec.get("dtype"), spec.get("shape", ...)
                if not isinstance(dtype, str) or not dtype:
                    raise wrong(f"{where}.dtype", "a dtype name", dtype)
                if shape is None:
                    out[name] = TensorSpec(dtype, None)
                    continue
                if not isinstance(shape, list):
                    raise wrong(f"{where}.shape", "a list or null", shape)
                for i, d in enumerate(shape):
                    if not isinstance(d, int) or isinstance(d, bool) or d < -1:
                        raise wrong(f"{where}.shape[{i}]", "an integer >= -1", d)
                out[name] = TensorSpec(dtype, tuple(shape))
            return out

        if not isinstance(data, dict):
            raise wrong("", "an object", data)
        method = data.get("method")
        if not isinstance(method, str):
            raise wrong(".method", "a string", method)
        return cls(method, specs("inputs", data.get("inputs")), specs("outputs", data.get("outputs")))

    def input_incompatibilities(self, new: Signature) -> list[str]:
        """Reasons why clients of ``self`` would break against ``new`` (empty when compatible)."""
        problems = []
        for name, spec in sorted(self.inputs.items()):
            if name not in new.inputs:
                problems.append(f"input {name!r} removed")
            elif not spec.accepts(new.inputs[name]):
                problems.append(f"input {name!r} changed from {_fmt(spec)} to {_fmt(new.inputs[name])}")
        problems += [f"input {name!r} added" for name in sorted(set(new.inputs) - set(self.inputs))]
        return problems


def _fmt(spec: TensorSpec) -> str:
    return f"{spec.dtype}{list(spec.shape) if spec.shape is not None else '[?]'}"
