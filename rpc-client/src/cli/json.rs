//! The little JSON `rpc-client call --json` writes: strings escaped ([`push_string`]); bytes go
//! in base64 (the `base64` crate's standard alphabet, padded: in `output.rs`).

use crate::text::is_bidi;

/// Appends `text` to `out` as a JSON string literal, quotes included. Quotes and backslashes
/// are escaped, so are control characters (C0, DEL, C1) and bidirectional overrides
/// (`\uXXXX`, or `\n`, `\t` and the like), so that the output is safe on a terminal; other
/// non-ASCII text is kept as UTF-8.
pub(super) fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() || is_bidi(c) => {
                // All of these are in the Basic Multilingual Plane: one \u escape each.
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a JSON string literal.
    fn string(text: &str) -> String {
        let mut out = String::new();
        push_string(&mut out, text);
        out
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string(""), r#""""#);
        assert_eq!(string(r#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
        assert_eq!(string("a\nb\r\tc\u{8}\u{c}"), r#""a\nb\r\tc\b\f""#);
        assert_eq!(string("\0\x1b[2J\x7f"), r#""\u0000\u001b[2J\u007f""#);
        assert_eq!(string("\u{85}\u{9f}"), r#""\u0085\u009f""#);
        assert_eq!(string("x\u{202E}y\u{2066}"), r#""x\u202ey\u2066""#);
        // Non-ASCII text stays UTF-8, including beyond the Basic Multilingual Plane.
        assert_eq!(string("héllo, 世界 🦀 /"), "\"héllo, 世界 🦀 /\"");
    }

    #[test]
    fn every_control_character_is_escaped() {
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let quoted = string(&c.to_string());
            assert!(quoted.starts_with("\"\\"), "{c:?}: {quoted}");
            assert!(quoted.chars().all(|q| !q.is_control()), "{c:?}: {quoted}");
        }
    }
}
