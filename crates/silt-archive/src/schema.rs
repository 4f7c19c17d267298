//! A topic's declared value schema (`silt.archive.value.schema`): JSON values are decoded into
//! typed Arrow columns as well as kept raw. The declaration is a small JSON document naming
//! Arrow types:
//!
//! ```json
//! {"fields": [{"name": "id", "type": "int64"}, {"name": "name", "type": "string"},
//!             {"name": "price", "type": "float64", "nullable": true}]}
//! ```
//!
//! Types: `boolean`, `int32`, `int64`, `float32`, `float64`, `string`, `timestamp_ms`.
//! Fields are nullable unless `"nullable": false`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::Deserialize;

use crate::ArchiveError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decl {
    fields: Vec<FieldDecl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDecl {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn yes() -> bool {
    true
}

/// A parsed value schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSchema {
    /// The Arrow schema of the typed columns.
    pub schema: Arc<Schema>,
}

impl ValueSchema {
    /// Parses a declaration.
    pub fn parse(json: &str) -> Result<Self, ArchiveError> {
        let d: Decl = serde_json::from_str(json).map_err(|e| {
            ArchiveError::Schema(format!(
                "{e}; expected {{\"fields\": [{{\"name\": \"id\", \"type\": \"int64\"}}, ...]}}"
            ))
        })?;
        if d.fields.is_empty() {
            return Err(ArchiveError::Schema("no fields declared".into()));
        }
        let mut fields = Vec::with_capacity(d.fields.len());
        for f in d.fields {
            let t = match f.kind.as_str() {
                "boolean" => DataType::Boolean,
                "int32" => DataType::Int32,
                "int64" => DataType::Int64,
                "float32" => DataType::Float32,
                "float64" | "double" => DataType::Float64,
                "string" | "utf8" => DataType::Utf8,
                "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                other => {
                    return Err(ArchiveError::Schema(format!(
                        "field {:?} has type {other:?}; use boolean, int32, int64, float32, float64, string or timestamp_ms",
                        f.name
                    )))
                }
            };
            if f.name.is_empty() {
                return Err(ArchiveError::Schema("a field has an empty name".into()));
            }
            fields.push(Field::new(f.name, t, f.nullable));
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse_and_mistakes_are_explained() {
        let s = ValueSchema::parse(
            r#"{"fields":[{"name":"id","type":"int64","nullable":false},{"name":"n","type":"string"}]}"#,
        )
        .unwrap();
        assert_eq!(s.schema.fields().len(), 2);
        assert!(!s.schema.field(0).is_nullable());
        let e = ValueSchema::parse(r#"{"fields":[{"name":"x","type":"decimal"}]}"#).unwrap_err();
        assert!(e.to_string().contains("decimal"), "{e}");
        assert!(ValueSchema::parse("{}").is_err());
        assert!(ValueSchema::parse(r#"{"fields":[]}"#).is_err());
    }
}
