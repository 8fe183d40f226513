"""Commands that talk to TF Serving: predict, smoke."""

from __future__ import annotations

import argparse
import base64
import contextlib
from typing import Any

import numpy as np

from model_export.errors import ModelfleetError
from modelfleet import client
from modelfleet.cli.common import (
    command,
    emit_data_json,
    emit_json,
    int_at_least,
    json_arg,
    positive_seconds,
    tensorflow_logs_hidden,
)


def _jsonable(name: str, arr: np.ndarray[Any, Any]) -> Any:
    """Output values as TF Serving's REST API prints them: numbers; text, or {"b64": ...} for ``*_bytes`` outputs.
    Complex values (gRPC only: TF Serving's JSON has none) as [real, imaginary] pairs, as TensorProto stores them."""
    if arr.dtype.kind == "c":
        return _jsonable(name, np.stack([arr.real, arr.imag], axis=-1))
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 8:
        # Each value's shortest text that reads back as the same float32 (0.1, not 0.10000000149011612 as a float64
        # widened from it would print): what TF Serving's JSON prints, and what a reader wants.
        return arr.astype(str).astype(np.float64).tolist()
    if arr.dtype.kind != "O":
        return arr.tolist()

    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(i) for i in item]
        if isinstance(item, bytes):
            if not name.endswith("_bytes"):
                try:
                    return item.decode()
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(item).decode("ascii")}
        return item

    return convert(arr.tolist())


def cmd_predict(args: argparse.Namespace) -> int:
    """Send one predict request to TF Serving and print the outputs as JSON.

    INPUT is TF Serving's request JSON ({"instances": [...]} or {"inputs": {...}}, "-" reads stdin), a .npy file
    (one unnamed input) or a .npz file (one array per input name). REST by default (--url http://HOST:8501); gRPC
    with --grpc (--url HOST:8500). Prints {"outputs": {NAME: values}} with the signature's output names: on one
    line when piped, indented on a terminal (a row of numbers stays on one line). Over REST the name of a
    single-output model's output costs one more request (its metadata): TF Serving's JSON leaves it unnamed.
    Strings print as text; as {"b64": ...} when not UTF-8 or when the output's name ends in _bytes (TF Serving's
    rule); complex numbers as [real, imaginary] pairs.

    Example:
      modelfleet predict --url http://10.0.0.5:8501 --model digits request.json
      echo '{"instances": [[0.1, 0.2, 0.3, 0.4]]}' | modelfleet predict --url http://10.0.0.5:8501 --model digits -
      modelfleet predict --url 10.0.0.5:8500 --grpc --model digits --label canary batch.npz
    """
    request = client.read_inputs(args.input)
    # gRPC imports TensorFlow (the protos), whose start-up logging is noise here; REST never imports it.
    with tensorflow_logs_hidden() if args.grpc else contextlib.nullcontext():
        outputs = client.predict(
            args.url,
            args.model,
            request.arrays,
            version=args.version,
            label=args.label,
            grpc=args.grpc,
            row_format=request.row_format,
            signature_name=request.signature_name,
            cast_to_signature=request.from_json,
            timeout=args.timeout,
        )
    emit_data_json({"outputs": {name: _jsonable(name, arr) for name, arr in sorted(outputs.items())}})
    return 0


def _shapes(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{name}{shape}" for name, shape in sorted(shapes.items())) or "none"


def cmd_smoke(args: argparse.Namespace) -> int:
    """Check that TF Serving serves a model: an AVAILABLE version, then one predict that succeeds.

    Uses the REST API (--url http://HOST:8501). Without --input the sample is one row of zeros (empty strings for
    string inputs) shaped from the model's metadata (GET /v1/models/NAME/metadata); a model with an input of
    unknown rank needs --input (same formats as `modelfleet predict`). Exit 0 when the model answered, 1 with the
    reason when it did not.

    Example:
      modelfleet smoke --url http://10.0.0.5:8501 --model digits
      modelfleet smoke --url http://lb.example.com --model digits --label canary --input sample.json --json
    """
    sample = client.read_inputs(args.input).arrays if args.input else None
    result = client.smoke(args.url, args.model, sample, version=args.version, label=args.label, timeout=args.timeout)
    if args.json:
        emit_json(result.to_json())
    if not result.ok:
        raise ModelfleetError(f"smoke test of {args.model!r} at {result.url} failed: {result.reason}")
    if not args.json:
        print(
            f"ok: {args.model} version {result.version} answered in {result.seconds * 1000:.0f} ms "
            f"(inputs {_shapes(result.inputs)}; outputs {_shapes(result.outputs)})"
        )
    return 0


def _server_args(p: argparse.ArgumentParser, url_help: str) -> None:
    p.add_argument("--url", required=True, help=url_help)
    p.add_argument("--model", required=True, metavar="NAME", help="model name in TF Serving")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--version", type=int_at_least(1), metavar="N", help="this version (default: the highest AVAILABLE one)"
    )
    which.add_argument("--label", metavar="LABEL", help="the version this label points at (e.g. stable, canary)")
    p.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS", help="default: 30")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "predict", cmd_predict, cmd_predict.__doc__)
    _server_args(p, "http://HOST:8501 (REST), or HOST:8500 with --grpc")
    p.add_argument("--grpc", action="store_true", help="use gRPC (PredictionService.Predict)")
    p.add_argument("input", metavar="INPUT", help="request JSON file, - for stdin, .npy or .npz")

    p = command(sub, "smoke", cmd_smoke, cmd_smoke.__doc__)
    _server_args(p, "TF Serving's REST URL, http://HOST:8501")
    p.add_argument("--input", metavar="FILE", help="the sample to send (default: zeros shaped from the metadata)")
    json_arg(p)
