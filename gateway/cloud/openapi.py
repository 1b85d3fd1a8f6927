"""The OpenAPI 3.1 document of the command API (CONTRACT §6), built as data from the catalog.

Each interface's request `data` schema (`gateway.protocol.schema.interface_schema`)
is under `components/schemas/{code}`; each downlink interface has its own command
path, so a generated client gets one typed operation per command.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol.catalog import INTERFACES, DeliveryClass, Interface
from gateway.protocol.schema import interface_schema

__all__ = ["API_VERSION", "openapi_document"]

API_VERSION = "1.0.0"

Document = dict[str, Any]

_JSON = "application/json"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _response(description: str, schema_name: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("schemas", schema_name))}


_PARK_CODE = {
    "name": "parkCode",
    "in": "path",
    "required": True,
    "description": "The lot's park code, as in a [[lot]] entry of the configuration.",
    "schema": {"type": "string", "maxLength": 50},
}

_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_MS_OR_NULL = {"type": ["number", "null"], "description": "Milliseconds; null without commands."}
_LATENCY_PROPERTIES: dict[str, Any] = {
    "count": {"type": "integer", "description": "Commands in the window."},
    "p50Ms": _MS_OR_NULL,
    "p90Ms": _MS_OR_NULL,
    "p99Ms": _MS_OR_NULL,
    "maxMs": _MS_OR_NULL,
}
_LATENCY_REQUIRED = ["count", "p50Ms", "p90Ms", "p99Ms", "maxMs"]
_SCALAR = {"type": ["string", "integer", "number", "boolean", "null"]}

_OWN_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "CommandReply": {
        "type": "object",
        "description": "The lot's REPLY to the command, as the lot gave it.",
        "properties": {
            "resultCode": {"type": "string", "description": "The lot's four-digit result code."},
            "resultMessage": {"type": "string"},
            "data": {"description": "The reply's data, as the lot sent it."},
        },
        "required": ["resultCode", "resultMessage", "data"],
    },
    "CommandRefused": {
        "type": "object",
        "description": "The command did not reach the lot (9008) or got no reply in time (9009).",
        "properties": {
            "resultCode": {"type": "string", "enum": ["9008", "9009", "9999"]},
            "resultMessage": {"type": "string"},
        },
        "required": ["resultCode", "resultMessage"],
    },
    "Park": {
        "type": "object",
        "properties": {
            "parkCode": {"type": "string"},
            "connected": {"type": "boolean", "description": "Whether the lot's downlink is bound now."},
            "since": {**_TIME_OR_NULL, "description": "When the current connection (or outage) began."},
            "lastSeen": {**_TIME_OR_NULL, "description": "When the lot last sent anything."},
            "peer": {"type": "string", "description": "The connected lot's address, or empty."},
            "backlog": {"type": "integer", "description": "Sync entries still to deliver to the lot."},
            "gateway": {
                "type": ["string", "null"],
                "description": "With [cluster] only: the id of the gateway holding the lot's downlink "
                "(this one or another, from the placement bucket), or null when none does.",
            },
        },
        "required": ["parkCode", "connected", "since", "lastSeen", "peer", "backlog"],
    },
    "SyncQueued": {
        "type": "object",
        "properties": {"seq": {"type": "integer", "description": "The journal seq of the entry."}},
        "required": ["seq"],
    },
    "Parks": {
        "type": "object",
        "properties": {"parks": {"type": "array", "items": _ref("schemas", "Park")}},
        "required": ["parks"],
    },
    "Status": {
        "type": "object",
        "description": "What the status page shows: the gateway, its journal, forwarding, commands, lots.",
        "properties": {
            "gateway": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "now": {"type": "string", "format": "date-time"},
                    "started": {"type": "string", "format": "date-time"},
                    "uptimeSeconds": {"type": "number"},
                },
                "required": ["id", "now", "started", "uptimeSeconds"],
            },
            "ready": {
                "type": "object",
                "description": "As /readyz says.",
                "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
                "required": ["ok", "reason"],
            },
            "journal": {
                "type": "object",
                "properties": {
                    "lastSeq": {"type": "integer", "description": "The last seq appended."},
                    "committedSeq": {"type": "integer", "description": "The last seq on disk."},
                    "problem": {
                        "type": ["string", "null"],
                        "description": "Why the journal cannot write, if it cannot.",
                    },
                },
                "required": ["lastSeq", "committedSeq", "problem"],
            },
            "forwarding": {
                "type": "object",
                "properties": {
                    "sink": {"type": "string", "enum": ["log-only", "cloudevents", "t002"]},
                    "backlog": {
                        "type": ["integer", "null"],
                        "description": "Records not yet forwarded; null with the log-only sink.",
                    },
                    "lagSeconds": {
                        "type": ["number", "null"],
                        "description": "How long the oldest unforwarded record has waited; null if none.",
                    },
                    "note": {"type": ["string", "null"]},
                },
                "required": ["sink", "backlog", "lagSeconds", "note"],
            },
            "commands": {
                "type": "object",
                "description": "Durations of the last `window` commands answered, overall and by outcome.",
                "properties": {
                    "window": {"type": "integer"},
                    "total": {"type": "integer", "description": "Commands answered since start-up."},
                    **_LATENCY_PROPERTIES,
                    "byOutcome": {
                        "type": "object",
                        "description": "By outcome: ok, not_connected, deadline, error, journal_failed.",
                        "additionalProperties": {
                            "type": "object",
                            "properties": _LATENCY_PROPERTIES,
                            "required": _LATENCY_REQUIRED,
                        },
                    },
                },
                "required": ["window", "total", *_LATENCY_REQUIRED, "byOutcome"],
            },
            "lots": {
                "type": "object",
                "properties": {
                    "online": {"type": "integer"},
                    "offline": {"type": "integer"},
                    "items": {
                        "type": "array",
                        "description": "Every configured lot, offline ones first, then by park code.",
                        "items": {
                            "allOf": [_ref("schemas", "Park")],
                            "properties": {"dialect": {"type": "string"}},
                            "required": ["dialect"],
                        },
                    },
                },
                "required": ["online", "offline", "items"],
            },
            "rejections": {
                "type": "array",
                "description": "The latest rejections (by lots or by the cloud), newest first, at most 50.",
                "items": {
                    "type": "object",
                    "properties": {
                        "time": _TIME_OR_NULL,
                        "event": {
                            "type": ["string", "null"],
                            "description": "lot.rejected, cloud.rejected, ...",
                        },
                        "park": _SCALAR,
                        "code": _SCALAR,
                        "result": {
                            **_SCALAR,
                            "description": "The four-digit result code or the HTTP status.",
                        },
                        "reason": _SCALAR,
                    },
                    "required": ["time", "event", "park", "code", "result", "reason"],
                },
            },
        },
        "required": ["gateway", "ready", "journal", "forwarding", "commands", "lots", "rejections"],
    },
    "ReloadOutcome": {
        "type": "object",
        "description": "What the reload did; a refused one has an `error` line and changed nothing.",
        "properties": {"error": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["status"],
    },
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _response(
        "Unknown code, a code that is not sent down to lots, a body that is not a JSON "
        "object or list, or data the catalog refuses (the error names the field).",
        "Error",
    ),
    "Unauthorized": {
        **_response("Missing or wrong bearer token.", "Error"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "Forbidden": _response("The token is right but its client lacks the role.", "Error"),
    "NotFound": _response("No such park (or schema) is configured.", "Error"),
    "TooLarge": _response("The body is larger than the gateway takes.", "Error"),
    "JournalUnavailable": _response("The command could not be journaled, so it was not sent.", "Error"),
    "NotAvailable": _response("This gateway was built without it.", "Error"),
}


def _command_operation(interface: Interface) -> dict[str, Any]:
    """The POST operation of one downlink interface."""
    assert interface.downlink is not None
    delivery = interface.downlink
    common = {
        "400": _ref("responses", "BadRequest"),
        "401": _ref("responses", "Unauthorized"),
        "403": _ref("responses", "Forbidden"),
        "404": _ref("responses", "NotFound"),
        "413": _ref("responses", "TooLarge"),
    }
    if delivery is DeliveryClass.COMMAND:
        responses = {
            "200": _response("The lot's REPLY.", "CommandReply"),
            **common,
            "409": _response("The lot is not connected (resultCode 9008).", "CommandRefused"),
            "500": _response("The gateway failed to send it (resultCode 9999).", "CommandRefused"),
            "503": _ref("responses", "JournalUnavailable"),
            "504": _response("No reply before the deadline (resultCode 9009).", "CommandRefused"),
        }
        description = (
            f"Sent to the connected lot at once (role `command`); its REPLY is the answer. "
            f"Deadline {interface.deadline:g} s. Never queued."
        )
    else:
        responses = {
            **common,
            "202": _response(
                "Journaled; delivery follows, in order, when the lot is connected.", "SyncQueued"
            ),
            "503": _ref("responses", "JournalUnavailable"),
        }
        description = (
            "Sync delivery (role `sync`): journaled (202 with the journal seq), then delivered "
            "to the lot in order whenever it is connected, retried until it replies 0000 or the "
            "entry's time to live passes; the outcome is journaled."
        )
    return {
        "operationId": f"{interface.code}Command",
        "summary": f"{interface.number} {interface.code} {interface.title} ({interface.table})",
        "description": description,
        "tags": [delivery.value],
        "parameters": [_PARK_CODE],
        "requestBody": {
            "required": True,
            "description": "The interface's `data`.",
            "content": _json_content(_ref("schemas", interface.code)),
        },
        "responses": responses,
    }


def _read(summary: str, ok: dict[str, Any], *, not_found: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": ok,
        "401": _ref("responses", "Unauthorized"),
        "403": _ref("responses", "Forbidden"),
    }
    if not_found:
        responses["404"] = _ref("responses", "NotFound")
    return {"get": {"summary": summary + " (role `read`).", "responses": responses}}


def _open(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """An operation that needs no token."""
    return {"get": {"summary": summary, "security": [], "responses": responses}}


def openapi_document() -> Document:
    """The OpenAPI 3.1 document of the command API, as JSON-ready data."""
    paths: dict[str, Any] = {
        "/v1/parks": _read("Connection state of every configured park", _response("The parks.", "Parks")),
        "/v1/parks/{parkCode}": {
            "parameters": [_PARK_CODE],
            **_read("Connection state of one park", _response("The park.", "Park"), not_found=True),
        },
    }
    for interface in INTERFACES:
        if interface.downlink is not None:
            paths[f"/v1/parks/{{parkCode}}/commands/{interface.code}"] = {
                "post": _command_operation(interface)
            }
    schema_ok = {
        "description": "The JSON Schema (draft 2020-12) of the interface's request data.",
        "content": _json_content({"type": "object"}),
    }
    paths["/v1/schemas/{code}.json"] = {
        "parameters": [
            {
                "name": "code",
                "in": "path",
                "required": True,
                "description": "The interface's code (carIn) or Table-1 number.",
                "schema": {"type": "string"},
            }
        ],
        **_read("JSON Schema of an interface's data", schema_ok, not_found=True),
    }
    paths["/v1/openapi.json"] = _read(
        "This document", {"description": "OpenAPI 3.1", "content": _json_content({"type": "object"})}
    )
    status = _read("The gateway's status, as the status page shows it", _response("The status.", "Status"))
    status["get"]["responses"]["501"] = _ref("responses", "NotAvailable")
    paths["/v1/status"] = status
    paths["/v1/admin/reload"] = {
        "post": {
            "summary": "Reload the configuration file (role `admin`).",
            "description": (
                "Reads the configuration file again and applies it, or refuses it whole. "
                "Lots, `[[api_client]]` entries and the API token may change; what cannot "
                "change without a restart is refused."
            ),
            "tags": ["admin"],
            "responses": {
                "200": _response("The new configuration is in force.", "ReloadOutcome"),
                "400": _response("Refused; the running configuration is unchanged.", "ReloadOutcome"),
                "401": _ref("responses", "Unauthorized"),
                "403": _ref("responses", "Forbidden"),
                "500": _response("The reload failed; the gateway's log says why.", "Error"),
                "501": _ref("responses", "NotAvailable"),
            },
        }
    }
    page = {"description": "The status page.", "content": {"text/html": {"schema": {"type": "string"}}}}
    paths["/"] = _open(
        "The status page: it holds no data and asks for a token to fetch /v1/status. No token needed.",
        {"200": page},
    )
    for asset, kind in (("/status.js", "text/javascript"), ("/status.css", "text/css")):
        paths[asset] = _open(
            f"The status page's {kind.removeprefix('text/')}. No token needed.",
            {"200": {"description": "The file.", "content": {kind: {"schema": {"type": "string"}}}}},
        )
    paths["/healthz"] = _open(
        "Liveness: the process answers. No token needed.",
        {"200": _response("Alive.", "Health")},
    )
    paths["/readyz"] = _open(
        "Readiness, with the reason when not ready. No token needed.",
        {"200": _response("Ready.", "Health"), "503": _response("Not ready.", "Health")},
    )
    paths["/metrics"] = _open(
        "Prometheus metrics (text exposition format). No token needed.",
        {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    schemas: dict[str, Any] = {interface.code: interface_schema(interface) for interface in INTERFACES}
    schemas.update(_OWN_SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cpmi-gateway command API",
            "version": API_VERSION,
            "description": (
                "The cloud's way down to the lots of a T/CPMI 002-2018 gateway. "
                "Roles: `read` (every GET under /v1), `command`, `sync`; `admin` has all, and "
                "alone may reload the configuration. "
                "The gateway's `cloud.api_token` has every role."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": _RESPONSES,
        },
    }
