//! The JSON Schemas of docs/schemas/, checked against every payload the observers see.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

/// Validators by the payload's `schema` name (`iscamd.prediction/1`, …).
pub struct Schemas {
    by_name: HashMap<String, jsonschema::Validator>,
}

impl Schemas {
    pub fn get() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(Schemas::load)
    }

    fn load() -> Schemas {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas");
        let read = |name: &str| -> Value {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        // Every schema by its $id: the page's answers refer to the MQTT payloads' schemas.
        let mut registry = jsonschema::Registry::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if file.ends_with(".schema.json") {
                let schema = read(&file);
                let id = schema["$id"]
                    .as_str()
                    .expect("every schema has an $id")
                    .to_string();
                registry = registry.add(id, schema).expect("a schema registers");
            }
        }
        let registry = registry.prepare().expect("the schemas register");
        let mut by_name = HashMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if !file.ends_with(".schema.json") || file == "common.schema.json" {
                continue;
            }
            let schema = read(&file);
            let validator = jsonschema::options()
                .with_registry(&registry)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            // Commands come in: they have no `schema` field of their own.
            let name = schema["properties"]["schema"]["const"]
                .as_str()
                .unwrap_or("command")
                .to_string();
            by_name.insert(name, validator);
        }
        Schemas { by_name }
    }

    /// Checks one payload against the schema its `schema` field names.
    pub fn check(&self, payload: &Value) -> Result<(), String> {
        let name = payload["schema"]
            .as_str()
            .ok_or_else(|| format!("no \"schema\" field: {payload}"))?;
        self.check_as(name, payload)
    }

    pub fn check_as(&self, name: &str, payload: &Value) -> Result<(), String> {
        let validator = self
            .by_name
            .get(name)
            .ok_or_else(|| format!("no schema {name} in docs/schemas"))?;
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{name}: {}", errors.join("; ")))
        }
    }
}

/// Topics of the daemon whose payloads are not JSON, or not the daemon's.
fn carries_json(topic: &str) -> bool {
    topic.starts_with("iscamd/")
        && !["/availability", "/heatmap/image", "/event/snapshot", "/cmd"]
            .iter()
            .any(|end| topic.ends_with(end))
}

/// A violation of the payload contract by a message on `topic`, if any.
pub fn violation(topic: &str, payload: &[u8]) -> Option<String> {
    if !carries_json(topic) || payload.is_empty() {
        return None;
    }
    let checked = serde_json::from_slice::<Value>(payload)
        .map_err(|e| format!("not JSON: {e}"))
        .and_then(|value| Schemas::get().check(&value));
    checked.err().map(|e| format!("{topic}: {e}"))
}
