//! Schema pieces schemars cannot derive the way the API server needs them.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A free-form JSON object (`params`): kept as written, unknown fields preserved.
pub fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A core/v1 Container whose `name` may be omitted (it defaults to the task name).
pub fn container_name_optional(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = k8s_openapi::api::core::v1::Container::json_schema(generator);
    if let Some(required) = schema
        .get_mut("required")
        .and_then(serde_json::Value::as_array_mut)
    {
        required.retain(|r| r != "name");
        if required.is_empty() {
            schema.remove("required");
        }
    }
    schema
}
