//! Escaping text for HTML, XML and Markdown tables: step output and params are arbitrary text
//! (a hostile `</script>` or `]]>` must stay text).

/// Escape text for HTML element content and double- or single-quoted attribute values.
#[must_use]
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape text for XML 1.0 content and attributes; characters XML 1.0 cannot carry at all
/// (most C0 controls) become U+FFFD, and tabs and newlines in attributes stay as references.
#[must_use]
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Make text safe for one Markdown table cell: one line, no column separator, no HTML.
///
/// Only a `<` that could open a tag is escaped, so that guards such as `x >= 50` stay readable
/// in a terminal, where the Markdown is read as often as on a forge.
#[must_use]
pub fn md_cell(text: &str) -> String {
    let one_line: Vec<char> = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::with_capacity(one_line.len());
    for (i, &c) in one_line.iter().enumerate() {
        match c {
            '|' => out.push_str("\\|"),
            '<' if one_line
                .get(i + 1)
                .is_some_and(|n| n.is_alphabetic() || matches!(n, '/' | '!' | '?')) =>
            {
                out.push_str("&lt;");
            }
            '`' => out.push('\''),
            c => out.push(c),
        }
    }
    out
}

/// Shorten text to at most `max` characters, marking the cut.
#[must_use]
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escape_neutralises_markup() {
        let hostile = r#"</script><img src=x onerror="alert(1)"> & 'q'"#;
        let e = html_escape(hostile);
        assert_eq!(
            e,
            "&lt;/script&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &#39;q&#39;"
        );
        assert!(!e.contains('<') && !e.contains('"') && !e.contains('\''));
    }

    #[test]
    fn xml_escape_handles_cdata_end_and_controls() {
        assert_eq!(
            xml_escape("]]><a b=\"c\">\u{1b}[31m\n"),
            "]]&gt;&lt;a b=&quot;c&quot;&gt;\u{FFFD}[31m&#10;"
        );
    }

    #[test]
    fn md_cell_keeps_one_cell() {
        assert_eq!(md_cell("a|b\nc <x> `y`"), "a\\|b c &lt;x> 'y'");
        assert_eq!(md_cell("a >= 5 and b < 3"), "a >= 5 and b < 3");
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
