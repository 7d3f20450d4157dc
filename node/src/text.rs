//! The rules for text users send and choose, shared by every field that
//! keeps it.
//!
//! - NUL (U+0000) is refused everywhere: PostgreSQL cannot store it in
//!   `text` or `jsonb`, so it would otherwise surface as a 500. The JSON and
//!   query extractors ([`crate::extract`]) refuse it for every field at
//!   once, with 400 `nul_character`.
//! - Chosen text (names, topics, descriptions) is trimmed, bounded in
//!   characters and free of control characters ([`required_text`],
//!   [`optional_text`]): 400 `invalid_request`.
//! - Names (server, channel, role names, nicknames) must not carry
//!   bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069) or
//!   zero-width characters (U+200B–U+200D, U+2060, U+FEFF): they let one
//!   name render as another. Refused with 400 `unsafe_characters`.
//!   Message content may keep them; clients show content in isolation.
//!
//! A refusal is an [`InvalidField`]; the API answers it with 400 and its
//! code, the community commands carry it in their own error.

/// A request field that breaks its rule: a stable code and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    /// `invalid_request`, `nul_character` or `unsafe_characters`.
    pub code: &'static str,
    pub message: String,
}

impl InvalidField {
    /// A field that breaks a length or form rule (`invalid_request`).
    pub fn new(message: impl Into<String>) -> InvalidField {
        InvalidField {
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// Text with NUL (`nul_character`).
    pub fn nul() -> InvalidField {
        InvalidField {
            code: "nul_character",
            message: "text must not contain the NUL character (U+0000)".into(),
        }
    }
}

/// Trims a required text field and checks its length in characters.
pub fn required_text(field: &str, value: &str, min: usize, max: usize) -> Result<String, InvalidField> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min || len > max {
        return Err(InvalidField::new(format!("{field} must be {min} to {max} characters")));
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(InvalidField::new(format!("{field} must not contain control characters")));
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

/// Whether a JSON document contains a `\u0000` escape inside a string, the
/// only way JSON can carry NUL. An escape starts at a backslash preceded by
/// an even number of backslashes, so `"\\u0000"` (a backslash, then the
/// letters) does not count.
pub fn json_has_nul(json: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = find(&json[from..], b"u0000") {
        let at = from + at;
        let backslashes = json[..at].iter().rev().take_while(|b| **b == b'\\').count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a URL query string decodes to text with NUL (`%00`).
pub fn query_has_nul(query: &str) -> bool {
    query.contains("%00")
}

/// Bidirectional embeddings, overrides and isolates, and zero-width
/// characters: not allowed in names.
pub fn is_unsafe_in_names(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}'
    )
}

/// Refuses a name containing NUL or a character of [`is_unsafe_in_names`];
/// gives the name back unchanged.
pub fn check_name<'a>(field: &str, value: &'a str) -> Result<&'a str, InvalidField> {
    if value.contains('\0') {
        return Err(InvalidField::nul());
    }
    if value.chars().any(is_unsafe_in_names) {
        return Err(InvalidField {
            code: "unsafe_characters",
            message: format!("{field} must not contain bidirectional control or zero-width characters"),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_only_where_they_escape() {
        assert!(json_has_nul(br#"{"username":"a\u0000b"}"#));
        assert!(json_has_nul(br#"{"a":"\\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"u0000"}"#));
        assert!(query_has_nul("q=a%00b"));
        assert!(!query_has_nul("q=a%200"));
    }

    #[test]
    fn names_refuse_bidi_and_zero_width() {
        for bad in ["a\u{202e}b", "a\u{2066}b", "a\u{200b}b", "a\u{200d}b", "a\u{2060}", "\u{feff}a"] {
            let err = check_name("name", bad).err();
            assert_eq!(err.map(|e| e.code), Some("unsafe_characters"), "{bad:?}");
        }
        assert_eq!(check_name("name", "a\0b").err().map(|e| e.code), Some("nul_character"));
        assert_eq!(check_name("name", " Café 🎉 ").ok(), Some(" Café 🎉 "));
        assert_eq!(check_name("nickname", "").ok(), Some(""));
    }
}
