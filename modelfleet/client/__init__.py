"""Ask TF Serving for predictions over REST or gRPC, read its model status, smoke-test a deployment.

REST needs only the standard library and numpy. gRPC imports ``grpc`` and ``tensorflow_serving``'s protos on first
use (they import TensorFlow: install the ``export`` extra).

Tensors
  * ``make_tensor_proto`` fills ``TensorProto.tensor_content`` with the array's bytes (dtype and shape set); strings
    go to ``string_val``. ``tf.make_tensor_proto`` is not used (it needs TensorFlow and is slower).
  * ``serialize_predict_request`` writes the ``PredictRequest`` wire format itself: each array is copied once, straight
    into the message bytes. That is what ``predict(grpc=True)`` sends. A ``PredictRequest`` object
    (``make_predict_request``) costs a second copy, because protobuf copies every ``bytes`` value it is given.
  * ``tensor_to_numpy`` reads ``tensor_content`` with ``np.frombuffer``, so the array is READ-ONLY and shares memory
    with the message's bytes (call ``.copy()`` to write to it). It also reads the typed fields TF Serving answers
    with by default (``float_val``, ``int64_val``, ...; a short list is padded with its last value, as
    ``tf.make_ndarray`` does), and the string-list encoding of ``--enable_serialization_as_tensor_content``.
    Strings come back as object arrays of ``bytes``, like ``tf.make_ndarray``.
  * Little-endian hosts only (``tensor_content`` is the server's native byte order).

REST and JSON
  * Arrays are sent columnar (``{"inputs": ...}``) unless ``row_format`` (``{"instances": [...]}``). ``bytes``
    become ``{"b64": ...}``; ``str`` become JSON strings.
  * JSON carries no dtypes: numbers come back as float64/int64/bool arrays, strings as bytes.
  * When a model has ONE output TF Serving's JSON answer does not name it; ``predict`` then names it from the
    model's metadata (one more GET), so outputs carry the signature's names as gRPC answers do.

Errors: ``BadInput`` (exit 2) for a malformed URL or input, ``ServingError`` (exit 1) when TF Serving answers with
an error or cannot be reached.

Modules, one job each (import from ``modelfleet.client``; the modules are its internals):

* :mod:`~modelfleet.client.address`: the gRPC target.
* :mod:`~modelfleet.tfs_rest` (shared with the agent, no numpy): the REST base URL, model paths, one JSON
  request, ``model_status``.
* :mod:`~modelfleet.client.rest`: REST requests, the JSON request body, the arrays of a JSON answer.
* :mod:`~modelfleet.client.dtypes`: TensorFlow's DataType enum and numpy dtypes.
* :mod:`~modelfleet.client.tensors`: ``make_tensor_proto``, ``tensor_to_numpy``.
* :mod:`~modelfleet.client.wire`: ``serialize_predict_request``, ``make_predict_request``.
* :mod:`~modelfleet.client.grpc_api`: predict over gRPC, channel options, gRPC errors.
* :mod:`~modelfleet.client.metadata`: ``model_metadata``.
* :mod:`~modelfleet.client.prediction`: ``predict``.
* :mod:`~modelfleet.client.input_files`: ``read_inputs``, ``parse_request_json``.
* :mod:`~modelfleet.client.smoketest`: ``smoke``, ``sample_inputs``.
"""

from __future__ import annotations

from model_export.errors import ServingError
from modelfleet.client.address import grpc_target
from modelfleet.client.grpc_api import GRPC_MAX_MESSAGE_BYTES
from modelfleet.client.input_files import RequestInputs, parse_request_json, read_inputs
from modelfleet.client.metadata import DEFAULT_SIGNATURE, ModelMetadata, model_metadata
from modelfleet.client.prediction import predict
from modelfleet.client.smoketest import SmokeResult, sample_inputs, smoke
from modelfleet.client.tensors import Inputs, NDArray, TensorProto, make_tensor_proto, tensor_to_numpy
from modelfleet.client.wire import make_predict_request, serialize_predict_request
from modelfleet.tfs_rest import VersionStatus, model_status, rest_url

__all__ = [
    "DEFAULT_SIGNATURE",
    "GRPC_MAX_MESSAGE_BYTES",
    "Inputs",
    "ModelMetadata",
    "NDArray",
    "RequestInputs",
    "ServingError",
    "SmokeResult",
    "TensorProto",
    "VersionStatus",
    "grpc_target",
    "make_predict_request",
    "make_tensor_proto",
    "model_metadata",
    "model_status",
    "parse_request_json",
    "predict",
    "read_inputs",
    "rest_url",
    "sample_inputs",
    "serialize_predict_request",
    "smoke",
    "tensor_to_numpy",
]
