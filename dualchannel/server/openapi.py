"""The relay's OpenAPI 3.1 document, written by hand to match docs/relay.md."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "message", "details"],
    "properties": {
        "error": {"type": "string", "description": "short machine code"},
        "message": {"type": "string", "description": "what went wrong and how to fix it"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "rule": {"type": "string"}},
            },
        },
    },
}

_RATE_HEADERS = {
    "RateLimit-Limit": {"schema": {"type": "integer"}, "description": "requests per window"},
    "RateLimit-Remaining": {"schema": {"type": "integer"}},
    "RateLimit-Reset": {"schema": {"type": "integer"}, "description": "seconds until reset"},
}


def _err(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _session_param() -> dict[str, Any]:
    return {
        "name": "session_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"},
    }


_SIGNATURE_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in (
        "X-Session-ID",
        "X-Retry-Attempt",
        "X-Agent-Version",
        "X-Agent-Type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    )
]


def openapi_document(version: str) -> dict[str, Any]:
    envelope_ref = {"$ref": "#/components/schemas/Envelope"}
    bearer: list[dict[str, list[str]]] = [{"livekitToken": []}, {"livekitTokenQuery": []}]
    ingest_errors = {
        "400": _err("bad JSON, bad envelope, batch over cap, mixed sessions", _RATE_HEADERS),
        "401": _err("missing or wrong Standard Webhooks signature", _RATE_HEADERS),
        "413": _err("body or an envelope over its size cap", _RATE_HEADERS),
        "415": _err("not application/json", _RATE_HEADERS),
        "429": _err(
            "session over its rate",
            {**_RATE_HEADERS, "Retry-After": {"schema": {"type": "integer"}}},
        ),
        "503": _err("unexpected failure; retry", _RATE_HEADERS),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dualchannel relay",
            "version": version,
            "description": "Webhook ingest, durable per-session log, SSE fan-out with "
            "exact resume. See docs/relay.md.",
        },
        "paths": {
            "/api/transcription": {
                "post": {
                    "summary": "Store one envelope or a batch (idempotent on session/epoch/seq)",
                    "parameters": _SIGNATURE_HEADERS,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        envelope_ref,
                                        {
                                            "type": "array",
                                            "items": envelope_ref,
                                            "minItems": 1,
                                            "maxItems": 100,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "committed",
                            "headers": _RATE_HEADERS,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "success": {"const": True},
                                            "id": {"type": "string", "format": "uuid"},
                                            "processed": {"type": "integer"},
                                            "duplicates": {"type": "integer"},
                                            "timestamp": {"type": "string", "format": "date-time"},
                                        },
                                    }
                                }
                            },
                        },
                        **ingest_errors,
                    },
                }
            },
            "/api/metrics": {
                "post": {
                    "summary": "Store a session metrics report",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["sessionId", "metrics"],
                                    "properties": {
                                        "sessionId": {"type": "string"},
                                        "timestamp": {"type": "string"},
                                        "metrics": {"type": "object"},
                                        "source": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "stored",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"success": {"const": True}},
                                    }
                                }
                            },
                        },
                        "400": _err("bad JSON or report"),
                        "401": _err("bad signature"),
                        "413": _err("body too large"),
                        "415": _err("not JSON"),
                        "503": _err("unexpected failure"),
                    },
                }
            },
            "/api/sessions/{session_id}/events": {
                "get": {
                    "summary": "Server-Sent Events: replay the log, then live; resumable",
                    "security": bearer,
                    "parameters": [
                        _session_param(),
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                        {"name": "lastEventId", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "event stream: events named by envelope type, "
                            "plus heartbeat and overflow",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _err("bad session id or Last-Event-ID"),
                        "401": _err("missing or invalid token"),
                        "403": _err("token for another room or without subscribe grant"),
                    },
                }
            },
            "/api/sessions/{session_id}/messages": {
                "get": {
                    "summary": "Stored envelopes ordered by (epoch, seq), for gap backfill",
                    "security": bearer,
                    "parameters": [
                        _session_param(),
                        {"name": "epoch", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "after_seq",
                            "in": "query",
                            "schema": {"type": "integer", "default": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "default": 100, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "a page",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "sessionId": {"type": "string"},
                                            "messages": {"type": "array", "items": envelope_ref},
                                            "hasMore": {"type": "boolean"},
                                        },
                                    }
                                }
                            },
                        },
                        "400": _err("bad parameters"),
                        "401": _err("missing or invalid token"),
                        "403": _err("token for another room"),
                    },
                }
            },
            "/api/health": {
                "get": {
                    "summary": "Liveness and store reachability",
                    "responses": {
                        "200": {"description": "healthy"},
                        "503": {"description": "the store is failing"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus exposition",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Envelope": {
                    "type": "object",
                    "required": ["type", "sessionId", "epoch", "seq", "timestamp"],
                    "properties": {
                        "type": {"enum": ["transcript", "metrics", "event", "heartbeat"]},
                        "sessionId": {"type": "string"},
                        "epoch": {"type": "integer", "minimum": 0},
                        "seq": {"type": "integer", "minimum": 0},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "priority": {"enum": ["normal", "high", "critical"]},
                        "data": {"type": "object"},
                        "source": {"type": "string"},
                        "version": {"type": "string"},
                    },
                },
            },
            "securitySchemes": {
                "livekitToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "livekitTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }
