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
    use std::fmt::Write as _;
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}
