//! Rules for the text users send, shared by every field that keeps it.
//!
//! - NUL (U+0000) is refused everywhere: PostgreSQL cannot store it in
//!   `text` or `jsonb`, so it would otherwise surface as a 500. The JSON and
//!   query extractors ([`crate::extract`]) refuse it for every field at
//!   once, with 400 `nul_character`.
//! - Names (server, channel, role names, nicknames) must not carry
//!   bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069) or
//!   zero-width characters (U+200B–U+200D, U+2060, U+FEFF): they let one
//!   name render as another. Refused with 400 `unsafe_characters`.
//!   Message content may keep them; clients show content in isolation.

use crate::error::{ApiError, ApiResult};

/// 400 `nul_character`.
pub fn nul_error() -> ApiError {
    ApiError::bad_request("nul_character", "text must not contain the NUL character (U+0000)")
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
pub fn check_name<'a>(field: &str, value: &'a str) -> ApiResult<&'a str> {
    if value.contains('\0') {
        return Err(nul_error());
    }
    if value.chars().any(is_unsafe_in_names) {
        return Err(ApiError::bad_request(
            "unsafe_characters",
            format!("{field} must not contain bidirectional control or zero-width characters"),
        ));
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
