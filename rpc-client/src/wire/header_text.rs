//! Header values of any AMQP type as text ([`header_text`]), for showing a reply's headers.

use crate::properties::HeaderValue;

/// How deep [`header_text`] shows nested arrays and tables.
const MAX_HEADER_DEPTH: usize = 4;

/// A header value of any AMQP type as text: strings as they are (not made printable: do that
/// where it is shown), numbers, booleans and timestamps in decimal, byte arrays as UTF-8
/// (lossy), arrays as `[a, b]`, tables as `{k: v}` (nested at most a few levels, then `…`),
/// no value as the empty string.
pub fn header_text(value: &HeaderValue) -> String {
    let mut text = String::new();
    write_header_text(&mut text, value, 0);
    text
}

/// An AMQP decimal (`value` × 10^-`scale`) in decimal notation.
fn decimal_text(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        digits
    } else if digits.len() > scale {
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        format!("{whole}.{fraction}")
    } else {
        format!("0.{digits:0>scale$}")
    }
}

fn write_header_text(out: &mut String, value: &HeaderValue, depth: usize) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = match value {
        HeaderValue::Str(s) => {
            out.push_str(s);
            Ok(())
        }
        HeaderValue::Bool(b) => write!(out, "{b}"),
        HeaderValue::I8(v) => write!(out, "{v}"),
        HeaderValue::U8(v) => write!(out, "{v}"),
        HeaderValue::I16(v) => write!(out, "{v}"),
        HeaderValue::U16(v) => write!(out, "{v}"),
        HeaderValue::I32(v) => write!(out, "{v}"),
        HeaderValue::U32(v) => write!(out, "{v}"),
        HeaderValue::I64(v) => write!(out, "{v}"),
        HeaderValue::F32(v) => write!(out, "{v}"),
        HeaderValue::F64(v) => write!(out, "{v}"),
        HeaderValue::Timestamp(v) => write!(out, "{v}"),
        HeaderValue::Decimal { scale, value } => {
            out.push_str(&decimal_text(*scale, *value));
            Ok(())
        }
        HeaderValue::Bytes(bytes) => {
            out.push_str(&String::from_utf8_lossy(bytes));
            Ok(())
        }
        HeaderValue::Array(items) if depth < MAX_HEADER_DEPTH => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_header_text(out, item, depth + 1);
            }
            out.push(']');
            Ok(())
        }
        HeaderValue::Table(table) if depth < MAX_HEADER_DEPTH => {
            out.push('{');
            for (i, (name, item)) in table.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(name);
                out.push_str(": ");
                write_header_text(out, item, depth + 1);
            }
            out.push('}');
            Ok(())
        }
        HeaderValue::Array(_) | HeaderValue::Table(_) => {
            out.push('…');
            Ok(())
        }
        HeaderValue::Void => Ok(()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn header_values_of_any_type_become_text() {
        use HeaderValue as V;
        let mut table = BTreeMap::new();
        table.insert("a".into(), V::I64(-3));
        table.insert("b".into(), V::Array(vec![V::Bool(true), V::Void]));
        let cases = [
            (V::Str("x\ny".into()), "x\ny"),
            (V::U8(7), "7"),
            (V::F64(1.5), "1.5"),
            (V::Timestamp(1_700_000_000), "1700000000"),
            (V::Bytes(b"ok\xff".to_vec()), "ok\u{fffd}"),
            (V::Table(table), "{a: -3, b: [true, ]}"),
            (V::Void, ""),
        ];
        for (value, text) in cases {
            assert_eq!(header_text(&value), text, "{value:?}");
        }
        let mut deep = V::Bool(false);
        for _ in 0..100 {
            deep = V::Array(vec![deep]);
        }
        assert_eq!(header_text(&deep), "[[[[…]]]]");
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal_text(2, 12345), "123.45");
        assert_eq!(decimal_text(4, 12), "0.0012");
        assert_eq!(decimal_text(2, 5), "0.05");
        assert_eq!(decimal_text(0, 9), "9");
        assert_eq!(decimal_text(255, 1).len(), 257);
    }
}
