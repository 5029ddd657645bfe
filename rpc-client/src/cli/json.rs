//! The little JSON `rpc-client call --json` writes: strings escaped ([`push_string`]) and bytes in
//! base64 ([`base64`], RFC 4648 with padding).

use crate::text::is_bidi;

/// Appends `text` to `out` as a JSON string literal, quotes included. Quotes and backslashes
/// are escaped, so are control characters (C0, DEL, C1) and bidirectional overrides
/// (`\uXXXX`, or `\n`, `\t` and the like), so that the output is safe on a terminal; other
/// non-ASCII text is kept as UTF-8.
pub fn push_string(out: &mut String, text: &str) {
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

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in base64 (RFC 4648, section 4: the standard alphabet, with `=` padding).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextet = |shift: u32| char::from(BASE64[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
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

    #[test]
    fn base64_test_vectors_of_rfc_4648() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn base64_of_every_byte() {
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        let all: Vec<u8> = (0..=255).collect();
        let encoded = base64(&all);
        assert_eq!(encoded.len(), 344);
        assert!(encoded.starts_with("AAECAwQFBgcICQoL"), "{encoded}");
        assert!(encoded.ends_with("+/w=="), "{encoded}");
    }
}
