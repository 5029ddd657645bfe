//! Text from the network made safe for a terminal or a log line ([`printable`]).

/// The most characters of text from the network that [`printable`] keeps.
pub const MAX_PRINTABLE: usize = 300;

/// Makes text from the network safe for a terminal or a log line: control characters (escape
/// sequences, CR/LF that would forge log lines) and bidirectional overrides become `?`, and
/// only the first [`MAX_PRINTABLE`] characters are kept, followed by `…` when there were more.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PRINTABLE + 3));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_PRINTABLE {
            out.push('…');
            break;
        }
        out.push(if c.is_control() || is_bidi(c) { '?' } else { c });
    }
    out
}

/// Bidirectional marks and overrides, which reorder what a terminal shows: text from the
/// network must not carry them there ([`printable`], and the JSON of `rpc-client call --json`).
pub(crate) fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced_and_length_bounded() {
        assert_eq!(printable("a\x1b[2Jb\r\nc\u{202E}d"), "a?[2Jb??c?d");
        let long = printable(&"x".repeat(5_000_000));
        assert_eq!(long.chars().count(), MAX_PRINTABLE + 1);
        assert!(long.ends_with('…'));
    }
}
