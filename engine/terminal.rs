//! Text bound for a terminal: control characters from runbook names, step ids, params and
//! command output are made visible, so they cannot drive the terminal (set the window title,
//! move the cursor, hide a line, reorder text with bidi overrides).

use std::fmt::Write as _;

/// Whether a character would be interpreted by a terminal rather than shown.
fn is_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidirectional overrides and isolates: they make text read differently than it is.
        | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The text with every control character except tab and newline written as `\u{…}`
/// (`ESC` becomes `\u{1b}`).
#[must_use]
pub fn escape(text: &str) -> String {
    if !text.chars().any(is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text with every control character that serde leaves raw (DEL, C1, bidi overrides)
/// written as a JSON `\uXXXX` escape: the same value for a parser, inert on a terminal.
#[must_use]
pub fn escape_json(json: &str) -> String {
    if !json.chars().any(is_control) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if is_control(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] applied to every string and key of a value.
#[must_use]
pub fn escape_value(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(escape(s)),
        Value::Array(items) => Value::Array(items.iter().map(escape_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (escape(k), escape_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(escape("\u{1b}]0;pwned\u{7}x"), "\\u{1b}]0;pwned\\u{7}x");
        assert_eq!(escape("a\tb\nc"), "a\tb\nc");
        assert_eq!(escape("over\rwrite"), "over\\u{d}write");
        assert_eq!(escape("\u{9b}31m \u{7f}"), "\\u{9b}31m \\u{7f}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("plain ✓ text"), "plain ✓ text");
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"k": "a\u{1b}b\u{9b}c\u{7f}\u{202e}"});
        let text = super::escape_json(&v.to_string());
        assert!(!text.chars().any(super::is_control), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }
}
