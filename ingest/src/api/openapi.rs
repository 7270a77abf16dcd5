//! The OpenAPI 3.1 document served at `/openapi.json`, describing every data-plane route, its
//! parameters and its error codes. A test checks each route of the router is described here.

use axum::Json;
use serde_json::{Value, json};

/// Every route the api serves, as `(method, path)`; the router and this document must agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/resize"),
    ("get", "/v1/usage"),
    ("get", "/openapi.json"),
];

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    Json(spec())
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// The document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "imgpipe api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Resize images synchronously; the work happens behind Kafka. Authenticate with `Authorization: Bearer <api key>`."
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                        "code": {"type": "string", "description": "Stable machine-readable code."},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"}
                    }
                },
                "UsageReport": {
                    "type": "object",
                    "properties": {
                        "tenant_id": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"},
                        "granularity": {"type": "string"},
                        "buckets": {"type": "array", "items": {"type": "object", "additionalProperties": true}}
                    }
                }
            }
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/resize": {"post": {
                "summary": "Resize an image",
                "parameters": [
                    query("width", "Target width, 1–8192. Either width or height may be omitted with fit=inside.", json!({"type": "integer", "minimum": 1, "maximum": 8192})),
                    query("height", "Target height, 1–8192.", json!({"type": "integer", "minimum": 1, "maximum": 8192})),
                    query("fit", "inside (default), cover, contain or fill.", json!({"type": "string", "enum": ["inside", "cover", "contain", "fill"]})),
                    query("gravity", "Crop anchor for cover.", json!({"type": "string", "enum": ["centre", "north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"]})),
                    query("format", "Output format; default keeps the input's (GIF becomes PNG).", json!({"type": "string", "enum": ["jpeg", "png", "webp"]})),
                    query("quality", "Encoder quality 1–100.", json!({"type": "integer", "minimum": 1, "maximum": 100})),
                    query("enlarge", "Allow output larger than the input.", json!({"type": "boolean"}))
                ],
                "requestBody": {"required": true, "content": {
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/webp": {"schema": {"type": "string", "format": "binary"}},
                    "image/gif": {"schema": {"type": "string", "format": "binary"}}
                }},
                "responses": {
                    "200": {"description": "The resized image. `Server-Timing` carries queue, decode, resize, encode and total durations.",
                            "headers": {"X-Request-Id": {"schema": {"type": "string"}}, "Server-Timing": {"schema": {"type": "string"}}},
                            "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
                    "400": problem("bad_parameters: invalid or unknown query parameter, empty body."),
                    "401": problem("unauthenticated: missing or invalid API key."),
                    "403": problem("forbidden: the key's tenant is suspended."),
                    "413": problem("payload_too_large: the body is over the configured limit."),
                    "415": problem("unsupported_media_type: not JPEG, PNG, WebP or GIF."),
                    "422": problem("undecodable_image or too_many_pixels."),
                    "429": problem("rate_limited: see Retry-After."),
                    "503": problem("kafka_unavailable, overloaded, not_ready or auth_unavailable: retry shortly."),
                    "504": problem("deadline_exceeded: no reply within the deadline.")
                }
            }},
            "/v1/usage": {"get": {
                "summary": "The caller's own usage",
                "parameters": [
                    {"name": "from", "in": "query", "required": true, "description": "Start (inclusive): epoch seconds or RFC 3339.", "schema": {"type": "string"}},
                    {"name": "to", "in": "query", "required": true, "description": "End (exclusive).", "schema": {"type": "string"}},
                    query("granularity", "minute, hour (default) or day.", json!({"type": "string", "enum": ["minute", "hour", "day"]})),
                    query("group_by", "format or outcome.", json!({"type": "string", "enum": ["format", "outcome"]}))
                ],
                "responses": {
                    "200": {"description": "Usage buckets.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UsageReport"}}}},
                    "400": problem("bad_parameters: bad range or parameter."),
                    "401": problem("unauthenticated."),
                    "503": problem("usage_unavailable: ClickHouse unreachable.")
                }
            }},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document."}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let spec = spec();
        for (method, path) in ROUTES {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
}
