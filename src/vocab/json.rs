//! JSON string escaping for the answers and log lines outrigger writes by hand (the
//! access log, `/health`, `/config`, proxy-made errors): one function, used by all.

/// Escapes a string for a JSON string literal.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// Appends `text` escaped for a JSON string literal (as is when nothing needs escaping).
pub fn escape_into(out: &mut String, text: &str) {
    let _ = escape_to(out, text);
}

/// Writes `text` escaped for a JSON string literal to any `fmt::Write`, in runs: the text
/// between two characters that need escaping is written in one piece.
pub fn escape_to(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    if !text.bytes().any(needs_escape) {
        return out.write_str(text);
    }
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.write_str(&text[start..i])?;
        match b {
            b'"' => out.write_str("\\\"")?,
            b'\\' => out.write_str("\\\\")?,
            b'\n' => out.write_str("\\n")?,
            b'\r' => out.write_str("\\r")?,
            b'\t' => out.write_str("\\t")?,
            _ => write!(out, "\\u{:04x}", b)?,
        }
        start = i + 1;
    }
    out.write_str(&text[start..])
}

/// The bytes JSON does not allow as they are in a string: controls, `"` and `\`. None of
/// them occurs inside a multi-byte UTF-8 character, so splitting at them keeps characters
/// whole.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_what_json_forbids_and_keeps_the_rest_whole() {
        assert_eq!(escape("plain /path"), "plain /path");
        assert_eq!(escape("é\"ü\\\n\u{1}ß tail"), "é\\\"ü\\\\\\n\\u0001ß tail");
        assert_eq!(escape("\"\""), "\\\"\\\"");
        // Whatever it is given, the result parses back to the same text.
        let text = "a\"b\\c\td\u{7f}é\u{1f}";
        let parsed: String = serde_json::from_str(&format!("\"{}\"", escape(text))).unwrap();
        assert_eq!(parsed, text);
    }
}
