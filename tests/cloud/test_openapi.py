"""The OpenAPI 3.1 document of the command API."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.cloud.api import CommandApi
from gateway.cloud.openapi import openapi_document
from gateway.protocol.catalog import INTERFACES, DeliveryClass
from gateway.protocol.schema import interface_schema


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document, as a client would read it (through JSON)."""
    result: dict[str, Any] = json.loads(json.dumps(openapi_document()))
    return result


def test_valid_openapi_31(document: dict[str, Any]) -> None:
    """The document passes openapi-spec-validator as OpenAPI 3.1 (when installed)."""
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document, cls=validator.OpenAPIV31SpecValidator)
    assert document["openapi"] == "3.1.0"


def test_structure(document: dict[str, Any]) -> None:
    """Version, info, paths and components are there whether or not a validator is."""
    assert document["openapi"].startswith("3.1.")
    assert {"title", "version"} <= document["info"].keys()
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearer": []}]


def test_every_route_has_a_path(document: dict[str, Any]) -> None:
    """Every route of the API is described."""
    paths = document["paths"]
    for path in (
        "/v1/parks",
        "/v1/parks/{parkCode}",
        "/v1/schemas/{code}.json",
        "/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/status",
        "/",
        "/status.js",
        "/status.css",
    ):
        assert "get" in paths[path], path
    assert "post" in paths["/v1/admin/reload"]


def test_every_klein_route_is_documented(document: dict[str, Any]) -> None:
    """Each route and method the klein app serves matches a documented path and operation."""
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    for rule in CommandApi.app.url_map.iter_rules():
        # A variable of the route stands for a documented {parameter} or a documented value.
        pattern = "".join(
            "[^/]+" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", rule.rule)
        )
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            assert any(m == method and re.fullmatch(pattern, p) for p, m in documented), (rule.rule, method)


def test_status_and_reload(document: dict[str, Any]) -> None:
    """/v1/status needs `read`, with its schema; reload answers 200/400 with its outcome; the page is open."""
    status = document["paths"]["/v1/status"]["get"]
    assert "security" not in status
    assert status["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Status"
    }
    assert {"401", "403", "501"} <= status["responses"].keys()
    reload = document["paths"]["/v1/admin/reload"]["post"]
    assert "security" not in reload and "admin" in reload["summary"]
    assert {"200", "400", "401", "403", "501"} <= reload["responses"].keys()
    for path in ("/", "/status.js", "/status.css"):
        assert document["paths"][path]["get"]["security"] == []


def test_one_command_path_per_downlink_interface(document: dict[str, Any]) -> None:
    """Each downlink interface has its POST, with its schema as the body; uplink-only ones have none."""
    paths = document["paths"]
    for interface in INTERFACES:
        path = f"/v1/parks/{{parkCode}}/commands/{interface.code}"
        if interface.downlink is None:
            assert path not in paths
            continue
        post = paths[path]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{interface.code}"}
        responses = post["responses"]
        assert {"400", "401", "403", "404"} <= responses.keys()
        if interface.downlink is DeliveryClass.COMMAND:
            assert {"200", "409", "503", "504"} <= responses.keys()
        else:
            assert {"202", "503"} <= responses.keys() and "501" not in responses


def test_health_needs_no_token(document: dict[str, Any]) -> None:
    """Health and metrics override the bearer requirement; /v1 reads do not."""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert document["paths"][path]["get"]["security"] == []
    assert "security" not in document["paths"]["/v1/parks"]["get"]


def test_interface_schemas_in_components(document: dict[str, Any]) -> None:
    """components/schemas holds each interface's request schema, as schema.interface_schema gives it."""
    schemas = document["components"]["schemas"]
    for interface in INTERFACES:
        assert schemas[interface.code] == json.loads(json.dumps(interface_schema(interface)))


def test_refs_resolve(document: dict[str, Any]) -> None:
    """Every local $ref points at something in the document."""

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(document["paths"]) + refs(document["components"]["responses"]):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref
