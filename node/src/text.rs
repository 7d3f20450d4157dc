//! The rules for text a user chooses (names, topics, descriptions,
//! links): trimmed, bounded in characters, no control characters. REST
//! handlers and the community commands share them; a refusal is an
//! [`InvalidField`], which the API answers with 400 `invalid_request`.

/// A request field that breaks its rule; the text says which and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidField(pub String);

impl InvalidField {
    pub fn new(message: impl Into<String>) -> InvalidField {
        InvalidField(message.into())
    }
}

/// Trims a required text field and checks its length in characters.
pub fn required_text(field: &str, value: &str, min: usize, max: usize) -> Result<String, InvalidField> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min || len > max {
        return Err(InvalidField(format!("{field} must be {min} to {max} characters")));
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(InvalidField(format!("{field} must not contain control characters")));
    }
    Ok(trimmed.to_string())
}

/// Like [`required_text`] for an optional field; an empty string clears it.
pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, InvalidField> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => required_text(field, v, 1, max).map(Some),
    }
}
