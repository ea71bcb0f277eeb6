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
    container_rules(&mut schema);
    schema
}

/// What a resource request or limit must be: a quantity the Pod API takes (`500m`, `2Gi`,
/// `1.5`, `1e3`), not negative. CEL's `isQuantity` (Kubernetes ≥ 1.29) checks it at apply.
pub const QUANTITY_RULE: &str =
    "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))";
/// The message of [`QUANTITY_RULE`].
pub const QUANTITY_MESSAGE: &str =
    "must be a non-negative quantity such as 500m, 2Gi or 1.5 (as a Pod's resources take)";
/// Resources a request or limit map may name, and the length of one quantity: bounds that
/// let the API server accept the CEL rule's estimated cost for 500 tasks.
pub const MAX_RESOURCES: u32 = 32;
pub const MAX_QUANTITY_LENGTH: u32 = 64;
/// An environment variable name as the Pod API takes it since Kubernetes 1.34
/// (`RelaxedEnvironmentVariableValidation`): printable ASCII other than `=`, not empty.
pub const ENV_NAME_PATTERN: &str = "^[ -<>-~]+$";

/// Checks, at apply, what a container's (or `taskDefaults`') fields would otherwise make the
/// API server refuse only when the task's Pod is created: every quantity of
/// `resources.requests` and `resources.limits`, and every `env[].name`.
pub fn container_rules(schema: &mut Schema) {
    let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    if let Some(resources) = props
        .get_mut("resources")
        .and_then(|r| r.get_mut("properties"))
        .and_then(serde_json::Value::as_object_mut)
    {
        for field in ["requests", "limits"] {
            let Some(map) = resources
                .get_mut(field)
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            map.insert("maxProperties".into(), MAX_RESOURCES.into());
            if let Some(value) = map
                .get_mut("additionalProperties")
                .and_then(serde_json::Value::as_object_mut)
            {
                value.insert("maxLength".into(), MAX_QUANTITY_LENGTH.into());
                value.insert(
                    "x-kubernetes-validations".into(),
                    serde_json::json!([{"rule": QUANTITY_RULE, "message": QUANTITY_MESSAGE}]),
                );
            }
        }
    }
    if let Some(name) = props
        .get_mut("env")
        .and_then(|e| e.get_mut("items"))
        .and_then(|i| i.get_mut("properties"))
        .and_then(|p| p.get_mut("name"))
        .and_then(serde_json::Value::as_object_mut)
    {
        name.insert("pattern".into(), ENV_NAME_PATTERN.into());
    }
}

/// Cuts every description below the struct's own properties to its first sentence (see
/// [`brief_nested`]); the properties' own descriptions (ours) are kept whole.
pub fn brief_below_properties(schema: &mut Schema) {
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for prop in props
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            brief_all_but_own(prop);
        }
    }
}

/// Cuts every description inside a field's schema to its first sentence, its own (ours) kept
/// whole: the core/v1 types of the Pod-level fields (volumes, affinity, …) keep their full
/// validation and a description each, but not their long prose, so the DAG CRD stays within
/// the 256 KiB that client-side `kubectl apply` can record (`tests/crds.rs` checks the size).
pub fn brief_nested(schema: &mut Schema) {
    if let Some(obj) = schema.as_object_mut() {
        brief_all_but_own(obj);
    }
}

fn brief_all_but_own(schema: &mut serde_json::Map<String, serde_json::Value>) {
    for (key, value) in schema.iter_mut() {
        if key != "description" {
            brief(value);
        }
    }
}

fn brief(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(obj) => {
            for (key, v) in obj.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        let cut = first_sentence(text).len();
                        text.truncate(cut);
                    }
                    _ => brief(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(brief),
        _ => {}
    }
}

/// `text` up to the end of its first sentence (a period followed by white space, not one of
/// "e.g." or "i.e."), or its first paragraph.
fn first_sentence(text: &str) -> &str {
    let paragraph = text.split("\n\n").next().unwrap_or(text);
    let mut from = 0;
    while let Some(i) = paragraph[from..].find('.').map(|i| from + i) {
        let next = paragraph[i + 1..].chars().next();
        let head = &paragraph[..i];
        let abbreviation = ["e.g", "i.e", "E.g", "I.e"]
            .iter()
            .any(|a| head.ends_with(a));
        if next.is_none_or(char::is_whitespace) && !abbreviation {
            return &paragraph[..=i];
        }
        from = i + 1;
    }
    paragraph.trim_end()
}

#[cfg(test)]
mod tests {
    use super::first_sentence;

    #[test]
    fn first_sentences() {
        assert_eq!(first_sentence("One. Two."), "One.");
        assert_eq!(first_sentence("Use e.g. a name. More."), "Use e.g. a name.");
        assert_eq!(first_sentence("v1.2 is fine. More"), "v1.2 is fine.");
        assert_eq!(first_sentence("No period"), "No period");
        assert_eq!(first_sentence("Para one\n\nPara two. x"), "Para one");
        assert_eq!(first_sentence(""), "");
    }
}
