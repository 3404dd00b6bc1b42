//! Reading a JSON document into a type with errors that name the field at fault
//! (`schedule.days[0]: unknown variant ...`), since serde's own errors say what is wrong but
//! not where.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a document does not read as a `T`: the path of the field at fault (`None` for the
/// document itself) and what is wrong there.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "`{field}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Reads `value` as a `T`; an error names the field it is about.
pub fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        n: u8,
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            from_json::<Doc>(serde_json::json!({"name": "a", "items": [{"n": 1}, {"n": "x"}]}))
                .expect_err("a string is no number");
        assert_eq!(err.field.as_deref(), Some("items[1].n"));
        assert_eq!(
            err.to_string(),
            "`items[1].n`: invalid type: string \"x\", expected u8"
        );
        let err = from_json::<Doc>(serde_json::json!({})).expect_err("no name");
        assert_eq!(err.to_string(), "missing field `name`");
    }
}
