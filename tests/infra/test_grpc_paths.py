"""Issue 12, item 3: from outside the VMs, gRPC reaches only ``tensorflow.serving.PredictionService``, on both clouds.

TF Serving registers ``ModelService`` (``HandleReloadConfigRequest``: unload models, point at other base paths;
``GetModelStatus``) and the gRPC health service on the same port as ``PredictionService`` (``model_servers/
server.cc``), so anything that forwards that port whole exposes them. A gRPC call is an HTTP/2 POST to
``/<package>.<Service>/<Method>`` with content type ``application/grpc`` (gRPC over HTTP/2, PROTOCOL-HTTP2.md), and
both load balancers can route on that path. The resolvers of tests/infra/test_label_routes.py evaluate the planned
URL map (GCP) and listener rules (AWS) against such calls:

- GCP: only the route rule on the ``/tensorflow.serving.PredictionService/`` prefix (and a gRPC content type) reaches
  the gRPC backend services; every other call takes the REST default, and TF Serving's REST server answers 404 for a
  path outside ``/v1/`` (a gRPC client reads HTTP 404 as UNIMPLEMENTED).
- AWS: the rule matching the gRPC content type and ``/tensorflow.serving.PredictionService/*`` forwards to the gRPC
  target groups; any other gRPC call gets the fixed 404 of the next rule.
- The prediction calls get the same canary split as REST; gRPC cannot be routed by label (the label is in the body).
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError, StackConfig
from infra.offline import Plan
from model_export.constants import CANARY, STABLE
from tests.infra.test_label_routes import (
    CERTIFICATE,
    Route,
    aws_plan,
    aws_resolve,
    gcp_frontend,
    gcp_plan,
    gcp_resolve,
)

GRPC = {"content-type": "application/grpc"}
PREDICTION = "/tensorflow.serving.PredictionService"
# Every method of the prediction service (prediction_service.proto).
ALLOWED = [f"{PREDICTION}/{m}" for m in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")]
REFUSED = [
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",  # the admin API: reload, unload, new base paths
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/grpc.health.v1.Health/Check",  # the load balancers' own business
    "/tensorflow.serving.PredictionServiceX/Predict",  # a service whose name merely starts the same
    "/tensorflow.serving.predictionservice/Predict",  # paths are case-sensitive, like gRPC's method names
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
]
DOMAIN = "models.example.com"


def gcp_grpc_plan(**overrides: Any) -> tuple[StackConfig, Plan]:
    return gcp_plan(enableHttps=True, httpsDomains=[DOMAIN], enableGrpc=True, **overrides)


def aws_grpc_plan(**overrides: Any) -> tuple[StackConfig, Plan]:
    return aws_plan(enableHttps=True, certificateArn=CERTIFICATE, enableGrpc=True, **overrides)


def gcp_split(weight: int, suffix: str = "") -> dict[str, int]:
    """What a URL map holds for a split (no zero weights): ``{<role><suffix>: weight}``."""
    split = {f"{STABLE}{suffix}": 100 - weight, f"{CANARY}{suffix}": weight}
    return {k: w for k, w in split.items() if w > 0}


def aws_split(weight: int, kind: str) -> dict[str, int]:
    return {f"{STABLE}-{kind}": 100 - weight, f"{CANARY}-{kind}": weight}


def reaches_grpc(route: Route) -> bool:
    return isinstance(route, dict) and any(backend.endswith("-grpc") for backend in route)


# --- GCP: the URL map on 443 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 10, 100])
def test_gcp_grpc_reaches_only_the_prediction_service(weight: int) -> None:
    _, plan = gcp_grpc_plan(canaryWeightPercent=weight)
    urlmap, roles = gcp_frontend(plan, 443)
    for path in ALLOWED:
        assert gcp_resolve(urlmap, roles, path, host=DOMAIN, headers=GRPC) == gcp_split(weight, "-grpc"), path
    for path in REFUSED:
        # The REST backends: TF Serving's REST server, 404 outside /v1/ (UNIMPLEMENTED to a gRPC client).
        route = gcp_resolve(urlmap, roles, path, host=DOMAIN, headers=GRPC)
        assert route == gcp_split(weight) and not reaches_grpc(route), path
    # Not a gRPC call (no gRPC content type): REST, whatever the path.
    assert not reaches_grpc(gcp_resolve(urlmap, roles, f"{PREDICTION}/Predict", host=DOMAIN))
    assert gcp_resolve(urlmap, roles, "/v1/models/digits:predict", host=DOMAIN, headers=GRPC) == gcp_split(weight)


def test_gcp_grpc_label_requests_follow_the_weights() -> None:
    """A gRPC label (``model_spec.version_label``) is in the request body: the URL map cannot see it, so a gRPC call
    for the canary's label takes the split like any other prediction call (docs/gcp.md)."""
    _, plan = gcp_grpc_plan(canaryWeightPercent=10)
    urlmap, roles = gcp_frontend(plan, 443)
    assert gcp_resolve(urlmap, roles, f"{PREDICTION}/Predict", headers=GRPC) == gcp_split(10, "-grpc")
    # REST labels still go to their fleet (tests/infra/test_label_routes.py), gRPC's route first.
    assert gcp_resolve(urlmap, roles, "/v1/models/digits/labels/canary:predict") == {CANARY: 100}


def test_gcp_port_80_only_redirects_grpc_too() -> None:
    _, plan = gcp_grpc_plan()
    http_map, roles = gcp_frontend(plan, 80)
    for path in ALLOWED + REFUSED:
        assert gcp_resolve(http_map, roles, path, headers=GRPC) == "redirect", path


def test_gcp_grpc_without_https_is_refused() -> None:
    """gRPC clients reach the ALB with HTTP/2 over TLS: gRPC without HTTPS is refused before any cloud call."""
    with pytest.raises(ConfigError, match=r"modelfleet:enableGrpc = true needs modelfleet:enableHttps on gcp"):
        gcp_plan(enableGrpc=True, enableHttps=False)


# --- AWS: the HTTPS listener's rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 10, 100])
def test_aws_grpc_reaches_only_the_prediction_service(weight: int) -> None:
    _, plan = aws_grpc_plan(canaryWeightPercent=weight)
    for path in ALLOWED:
        assert aws_resolve(plan, 443, path, GRPC) == aws_split(weight, "grpc"), path
        # gRPC clients send the content type with a suffix at times (application/grpc+proto): the same rule.
        assert aws_resolve(plan, 443, path, {"content-type": "application/grpc+proto"}) == aws_split(weight, "grpc")
    for path in REFUSED:
        assert aws_resolve(plan, 443, path, GRPC) == "404", path  # the fixed response: UNIMPLEMENTED to the client
    # Not a gRPC call: REST, whatever the path.
    assert aws_resolve(plan, 443, f"{PREDICTION}/Predict") == aws_split(weight, "rest")
    assert aws_resolve(plan, 80, f"{PREDICTION}/Predict", GRPC) == "redirect"


def test_aws_grpc_label_requests_follow_the_weights() -> None:
    _, plan = aws_grpc_plan(canaryWeightPercent=10)
    assert aws_resolve(plan, 443, f"{PREDICTION}/Predict", GRPC) == aws_split(10, "grpc")
    # A gRPC call to a REST label path is no prediction-service call: refused, not sent to a label route.
    assert aws_resolve(plan, 443, "/v1/models/digits/labels/canary:predict", GRPC) == "404"
    assert aws_resolve(plan, 443, "/v1/models/digits/labels/canary:predict") == {"canary-rest": 100}
