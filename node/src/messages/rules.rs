//! The rules a message write must follow, for every origin: the REST API
//! and events from peers are judged by these same functions.

/// Longest message, in characters after trimming.
pub const MAX_CONTENT_CHARS: usize = 4000;

/// Why text or an emoji is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("content must not be empty")]
    Empty,
    #[error("content must be at most {MAX_CONTENT_CHARS} characters")]
    TooLong,
    #[error("content must not contain control characters")]
    Control,
    #[error("emoji must be a Unicode emoji or name:id")]
    Emoji,
}

impl Invalid {
    /// The reason a peer's event is refused for (spec/federation.md §4).
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Empty | Invalid::TooLong | Invalid::Control => "invalid_content",
            Invalid::Emoji => "invalid_emoji",
        }
    }
}

/// Message text: trimmed, at most 4000 characters, no control characters
/// other than newlines and tabs; empty only when `allow_empty`.
pub fn validate_content(raw: &str, allow_empty: bool) -> Result<String, Invalid> {
    let content = raw.trim();
    if content.is_empty() && !allow_empty {
        return Err(Invalid::Empty);
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(Invalid::TooLong);
    }
    if content.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(Invalid::Control);
    }
    Ok(content.to_string())
}


/// Checks an emoji: 1 to 64 bytes, no whitespace or control characters,
/// and either `name:id` (name 2–32 of `[A-Za-z0-9_]`, id 1–40 of
/// `[A-Za-z0-9-]`) or a Unicode emoji sequence.
pub fn validate_emoji(raw: &str) -> Result<String, Invalid> {
    let bad = || Invalid::Emoji;
    if raw.is_empty() || raw.len() > 64 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    if let Some((name, id)) = raw.split_once(':') {
        let name_ok = (2..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let id_ok = (1..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        return if name_ok && id_ok { Ok(raw.to_string()) } else { Err(bad()) };
    }
    if is_unicode_emoji(raw) { Ok(raw.to_string()) } else { Err(bad()) }
}

/// Whether every character belongs to an emoji sequence and there is at
/// least one pictograph (a keycap such as `1️⃣` counts through U+20E3).
fn is_unicode_emoji(s: &str) -> bool {
    let has_keycap = s.contains('\u{20e3}');
    let mut pictographs = 0;
    for c in s.chars() {
        let cp = c as u32;
        let pictograph = matches!(cp,
            0x1F000..=0x1FAFF   // pictographs, emoticons, transport, flags' regional indicators, skin tones
            | 0x2600..=0x27BF   // misc symbols, dingbats
            | 0x2300..=0x23FF   // technical (⌚, ⏰)
            | 0x2B00..=0x2BFF   // arrows and stars (⭐)
            | 0x2190..=0x21FF   // arrows
            | 0x2900..=0x297F
            | 0x25A0..=0x25FF   // geometric shapes
            | 0x3030 | 0x303D | 0x3297 | 0x3299
            | 0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x24C2);
        let joiner = matches!(cp, 0x200D | 0xFE0E | 0xFE0F | 0x20E3 | 0xE0020..=0xE007F);
        let keycap_base = has_keycap && (c.is_ascii_digit() || c == '#' || c == '*');
        if pictograph || keycap_base {
            pictographs += 1;
        } else if !joiner {
            return false;
        }
    }
    pictographs > 0 || has_keycap
}
