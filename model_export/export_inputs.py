"""What ``export_model`` feeds the model, decided by the model: its declared inputs, the sample (and validation data)
cast to them, and the refusal of a preprocessing the model already does. Imports TensorFlow (``export`` only).

Rules, each with one home here:

* Declared inputs: a Keras functional/sequential model's ``model.input`` (names from a dict's keys, else from the
  ``keras.Input(name=...)``), or a ``tf.function``'s ``input_signature`` (the function itself or a ``tf.Module``'s
  ``__call__``; names from the ``tf.TensorSpec(name=...)`` or the dict's keys). A single input Keras named itself
  (``keras_tensor_3``) or a spec without a name leaves the name to the sample. Anything else (a subclassed model,
  a plain function) declares nothing: the sample decides.
* Casting a sample to a declared dtype happens only when no value changes meaning: any cast numpy calls "safe";
  bool to a number; an integer to a wider-or-narrower integer type that holds every value; an integer to a float
  whose mantissa holds it exactly (|v| <= 2**24 for float32); a float to a narrower float when every finite value is
  within its range (float64 -> float32 rounds, as the model would compute in float32 anyway). Never a float to an
  integer, a number to a string or back, a complex to a real, or anything but bool to bool.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model_export.errors import BadInput, one_line

_MESSAGE_LIMIT = 300
# Input names are the SignatureDef key, the placeholder name and the Python keyword of the reloaded
# signature. TF sanitizes names outside this set ("x-y" becomes keyword "x_y"; "a b" fails to save), so only
# names that are the same in all three places are accepted.
_INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KERAS_AUTO_NAME = re.compile(r"^keras_tensor(_\d+)?$")  # keras.Input() without name=


@dataclass(frozen=True)
class Declared:
    """The inputs a model (or preprocessing) declares: ``specs`` by name, batch dimension ``None``."""

    specs: dict[str, tf.TensorSpec]
    named: bool  # False: one input whose name the model leaves to the caller (the sample's key names it)


def keras_inputs_struct(fn: Any) -> Any:
    """The structure a Keras functional/sequential model was built on, or None when not knowable."""
    if not isinstance(fn, keras.Model):
        return None
    try:
        return fn.input
    except Exception:  # subclassed models never called symbolically have no input structure
        return None


def _spec(shape: Any, dtype: Any, name: str) -> tf.TensorSpec:
    dims = list(tf.TensorShape(shape).as_list()) if tf.TensorShape(shape).rank is not None else None
    if dims is None:
        return tf.TensorSpec(None, tf.as_dtype(dtype), name=name)
    return tf.TensorSpec((None, *dims[1:]) if dims else (), tf.as_dtype(dtype), name=name)


def declared_inputs(fn: Any) -> Declared | None:
    """What ``fn`` declares about its inputs (see the module docstring), or None."""
    struct = keras_inputs_struct(fn)
    if struct is not None:
        if isinstance(struct, Mapping):
            return Declared({k: _spec(t.shape, t.dtype, k) for k, t in struct.items()}, named=True)
        tensors = list(struct) if isinstance(struct, list | tuple) else [struct]
        if len(tensors) == 1 and _KERAS_AUTO_NAME.match(tensors[0].name):
            return Declared({"": _spec(tensors[0].shape, tensors[0].dtype, "")}, named=False)
        return Declared({t.name: _spec(t.shape, t.dtype, t.name) for t in tensors}, named=True)
    signature = getattr(fn, "input_signature", None)
    if signature is None and not inspect.isfunction(fn):
        signature = getattr(type(fn).__call__, "input_signature", None)  # a tf.Module's @tf.function __call__
    if not isinstance(signature, list | tuple) or len(signature) != 1:
        return None  # nothing declared, or several positional arguments (not our calling convention)
    arg = signature[0]
    if isinstance(arg, tf.TensorSpec):
        if arg.name:
            return Declared({arg.name: _spec(arg.shape, arg.dtype, arg.name)}, named=True)
        return Declared({"": _spec(arg.shape, arg.dtype, "")}, named=False)
    if isinstance(arg, Mapping) and all(isinstance(v, tf.TensorSpec) for v in arg.values()):
        return Declared({k: _spec(v.shape, v.dtype, k) for k, v in arg.items()}, named=True)
    return None


# --- turning a sample (or validation x) into named tensors ---------------------------------------------------------


def _keyed(data: Any, declared: Declared | None, what: str) -> dict[str, Any]:
    """``data`` as a dict of input name -> value: a bare array is keyed by the model's single input's name."""
    if isinstance(data, Mapping):
        if not data:
            raise BadInput(f"{what} is empty; pass a dict of input name -> batch array, e.g. {{'pixels': x[:8]}}")
        return dict(data)
    if data is None or isinstance(data, str | bytes):
        raise BadInput(f"{what}={data!r} is not a batch; pass an array or a dict of input name -> batch array")
    if declared is None or not declared.named:
        raise BadInput(
            f"{what} is a bare array and the model does not name its input; pass a dict, e.g. {{'pixels': x[:8]}}"
        )
    if len(declared.specs) > 1:
        raise BadInput(
            f"{what} is a bare array but the model takes {len(declared.specs)} inputs {sorted(declared.specs)}; "
            "pass a dict keyed by those names"
        )
    return {next(iter(declared.specs)): data}


def _matched_specs(names: list[str], declared: Declared | None, what: str) -> dict[str, tf.TensorSpec | None]:
    for name in names:
        if not isinstance(name, str) or not _INPUT_NAME.match(name) or keyword.iskeyword(name):
            raise BadInput(f"input name {name!r} is invalid; use a letter then letters, digits or '_'")
    if declared is None:
        return dict.fromkeys(names)
    if not declared.named:
        if len(names) != 1:
            raise BadInput(f"{what} has inputs {sorted(names)}; the model takes a single input")
        return {names[0]: declared.specs[""]}
    if sorted(names) != sorted(declared.specs):
        raise BadInput(
            f"{what} has inputs {sorted(names)}; the model's inputs are {sorted(declared.specs)} "
            f"(key the {what} by the model's input names)"
        )
    return {name: declared.specs[name] for name in names}


def _array(value: Any) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if array.dtype.kind == "O" and array.size and not isinstance(array.flat[0], str | bytes):
        array = np.asarray(array.tolist())  # numbers boxed as objects (pandas' mixed columns): their own dtype
    if array.dtype.kind == "U":  # TF strings are bytes
        array = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
    return np.asarray(array)


def _cast_problem(array: np.ndarray, target: np.dtype[Any]) -> str | None:
    """Why casting ``array`` to ``target`` could change a value, or None when it cannot (module docstring)."""
    src = array.dtype
    if np.can_cast(src, target, "safe"):
        return None
    values = array[np.isfinite(array)] if src.kind in "fc" else array
    if src.kind == "b" and target.kind in "iuf":
        return None
    if target.kind == "b":
        return "only booleans become booleans"
    if src.kind == "c":
        return "a complex number has no real counterpart"
    if src.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return None
        return f"values outside [{info.min}, {info.max}]"
    if src.kind in "iu" and target.kind == "f":
        exact = 2 ** (_finfo(target).nmant + 1)
        if values.size == 0 or np.max(np.abs(values.astype(np.float64))) <= exact:
            return None
        return f"integers beyond {exact} are not exact in {target}"
    if src.kind == "f" and target.kind == "f":
        top = float(_finfo(target).max)
        if values.size == 0 or np.max(np.abs(values.astype(np.float64))) <= top:
            return None
        return f"values beyond {top:.3g} overflow {target}"
    if src.kind == "f" and target.kind in "iu":
        return "a float cast to an integer loses its fraction"
    return "the values cannot be converted"


def _finfo(dtype: np.dtype[Any]) -> Any:
    try:
        return np.finfo(dtype)
    except ValueError:  # bfloat16 and friends
        import ml_dtypes

        return ml_dtypes.finfo(dtype)  # type: ignore[no-untyped-call]


def _cast(name: str, array: np.ndarray, spec: tf.TensorSpec, what: str) -> np.ndarray:
    target_tf = spec.dtype
    src = "string" if array.dtype.kind in "SO" else array.dtype.name
    if target_tf == tf.string:
        if array.dtype.kind in "SO":
            return array
        raise BadInput(f"{what}[{name!r}] is {src} but the model's input {name!r} is string; pass strings, not numbers")
    target = np.dtype(target_tf.as_numpy_dtype)
    if array.dtype.kind in "SO":
        raise BadInput(
            f"{what}[{name!r}] is {src} but the model's input {name!r} is {target.name}; pass {target.name} data"
        )
    if array.dtype == target:
        return array
    problem = _cast_problem(array, target)
    if problem is not None:
        raise BadInput(
            f"{what}[{name!r}] is {src} but the model's input {name!r} is {target.name}, and the cast is unsafe "
            f"({problem}); pass {target.name} data"
        )
    return array.astype(target)


def _check_shape(name: str, tensor: tf.Tensor, spec: tf.TensorSpec, what: str) -> None:
    want = spec.shape
    if want.rank is None:
        return
    got = tensor.shape.as_list()
    if len(got) != want.rank or any(w is not None and w != g for w, g in zip(want.as_list(), got, strict=True)):
        shown = tuple(want.as_list())
        raise BadInput(f"{what}[{name!r}] has shape {tuple(got)}; the model's input {name!r} takes {shown}")


def input_tensors(data: Any, declared: Declared | None, what: str) -> dict[str, tf.Tensor]:
    """``data`` (a dict of input name -> batch, or a bare array for a single-input model) as tensors of the declared
    dtypes and shapes, every input with the same batch size (>= 1). ``what`` names ``data`` in errors."""
    keyed = _keyed(data, declared, what)
    specs = _matched_specs(list(keyed), declared, what)
    tensors: dict[str, tf.Tensor] = {}
    batch: int | None = None
    for name, value in keyed.items():
        spec = specs[name]
        try:
            array = _array(value)
        except (TypeError, ValueError) as e:
            raise BadInput(f"{what}[{name!r}] is not an array: {one_line(e, _MESSAGE_LIMIT)}") from e
        if spec is not None:
            array = _cast(name, array, spec, what)
        try:
            tensor = tf.constant(array)
        except (TypeError, ValueError) as e:
            raise BadInput(
                f"{what}[{name!r}] of dtype {array.dtype} is not a tensor: {one_line(e, _MESSAGE_LIMIT)}"
            ) from e
        if tensor.shape.rank == 0:
            raise BadInput(f"{what}[{name!r}] is a scalar; the first dimension must be the batch")
        if spec is not None:
            _check_shape(name, tensor, spec, what)
        if batch is not None and tensor.shape[0] != batch:
            raise BadInput(f"{what}[{name!r}] has batch size {tensor.shape[0]}; other inputs have {batch}")
        if tensor.shape[0] == 0:
            raise BadInput(f"{what}[{name!r}] has batch size 0; pass at least one row")
        batch = int(tensor.shape[0])
        tensors[name] = tensor
    return tensors


# --- the same preprocessing twice ----------------------------------------------------------------------------------

# Layers whose second application changes the data (a Flatten or a Dense twice is not a preprocessing mistake).
_PREPROCESSING_KINDS = (
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.StringLookup,
    keras.layers.IntegerLookup,
    keras.layers.TextVectorization,
    keras.layers.Discretization,
    keras.layers.Hashing,
    keras.layers.CategoryEncoding,
)


def trackables(objs: Sequence[Any]) -> list[Any]:
    """Layers, modules and lookup tables reachable from ``objs``: a function's closure, globals and default arguments,
    a ``functools.partial``'s arguments, and the attributes a method (or a callable object's ``__call__``) reads
    from ``self``.

    ``ExportArchive`` saves the variables the endpoint reads by itself, but lookup tables (StringLookup,
    TextVectorization, tf.lookup) only when their owner is tracked; a preprocessing function that closes
    over a StringLookup would otherwise fail to save with an "untracked resource" error.
    """
    kinds = (keras.layers.Layer, tf.Module, tf.saved_model.experimental.TrackableResource)
    found: list[Any] = []
    seen: dict[int, Any] = {}  # holding the objects: a bound method made here must not free its id for another

    def visit(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 3:
            return
        seen[id(obj)] = obj
        if isinstance(obj, kinds):
            found.append(obj)
        elif isinstance(obj, list | tuple):
            for item in obj:
                visit(item, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, depth + 1)
        elif isinstance(obj, tf.types.experimental.GenericFunction):
            visit(getattr(obj, "python_function", None), depth + 1)  # tf.function -> its Python function
        elif isinstance(obj, functools.partial):
            for item in (obj.func, *obj.args, *obj.keywords.values()):
                visit(item, depth + 1)
        elif inspect.ismethod(obj):
            visit(obj.__self__, depth + 1)
            visit(obj.__func__, depth + 1)
            # What the method reads from ``self``: ``self.lookup(x)`` in a preprocessing class.
            state = getattr(obj.__self__, "__dict__", None)
            code = getattr(obj.__func__, "__code__", None)
            if isinstance(state, dict) and code is not None:
                for name in code.co_names:
                    if name in state:
                        visit(state[name], depth + 1)
        elif inspect.isfunction(obj):
            try:
                refs = inspect.getclosurevars(obj)
            except (TypeError, ValueError):
                return
            defaults = [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
            for value in [*refs.nonlocals.values(), *refs.globals.values(), *defaults]:
                visit(value, depth + 1)
        elif callable(obj) and inspect.ismethod(obj.__call__):
            visit(obj.__call__, depth)  # an instance of a class defining __call__: as its bound method

    for obj in objs:
        visit(obj, 0)
    return found


def _layers(root: Any) -> list[Any]:
    """Every Keras layer in ``root`` (nested models included), and in the closure of a function."""
    out: dict[int, Any] = {}
    for obj in trackables([root]):
        if isinstance(obj, keras.layers.Layer):
            inner = obj._flatten_layers(include_self=True, recursive=True)
        elif isinstance(obj, tf.Module):
            try:  # Keras 3 layers are no tf.Modules; a Module's attributes may hold them
                inner = list(obj._flatten(predicate=lambda o: isinstance(o, keras.layers.Layer)))
            except Exception:
                inner = []
            inner = [x for layer in inner for x in layer._flatten_layers(include_self=True, recursive=True)]
        else:
            continue
        out.update((id(layer), layer) for layer in inner)
    return list(out.values())


def _close(a: Any, b: Any) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind in "SUO" or y.dtype.kind in "SUO":
        return x.shape == y.shape and bool(np.all(x == y))
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-7))


def _same_state(a: Any, b: Any) -> str | None:
    """What ``a`` and ``b`` (same class) have in common that makes them one preprocessing, or None."""
    config_a, config_b = a.get_config(), b.get_config()
    if isinstance(a, keras.layers.Normalization):
        if not (a.built and b.built) or config_a.get("invert") != config_b.get("invert"):
            return None
        same = (
            config_a.get("axis") == config_b.get("axis") and _close(a.mean, b.mean) and _close(a.variance, b.variance)
        )
        return "mean and variance" if same else None
    if isinstance(a, keras.layers.Rescaling):
        same = _close(a.scale, b.scale) and _close(a.offset, b.offset)
        return "scale and offset" if same else None
    if hasattr(a, "get_vocabulary"):
        same = getattr(a, "output_mode", None) == getattr(b, "output_mode", None) and _close(
            a.get_vocabulary(), b.get_vocabulary()
        )
        return "vocabulary" if same else None
    if isinstance(a, keras.layers.Discretization):
        same = _close(a.bin_boundaries or [], b.bin_boundaries or [])
        return "bin boundaries" if same else None
    config_a.pop("name", None)
    config_b.pop("name", None)
    return "configuration" if config_a == config_b else None


def double_preprocessing(preprocessing: Any, model: Any) -> str | None:
    """Why ``preprocessing`` would run twice in ``preprocessing`` then ``model``, or None: one of its layers (or
    one of the same kind and the same adapted state) is already inside the model."""
    inside = _layers(model)
    for layer in _layers(preprocessing):
        if not isinstance(layer, _PREPROCESSING_KINDS):
            continue
        kind = type(layer).__name__
        for other in inside:
            if other is layer:
                return f"its {kind} layer {layer.name!r} is also a layer of the model"
            if type(other) is type(layer) and (what := _same_state(layer, other)):
                return f"its {kind} layer {layer.name!r} has the same {what} as the model's layer {other.name!r}"
    return None
