//! Header values of any AMQP type as text ([`header_text`]), for showing a reply's headers.

use amiquip::AmqpValue;

/// How deep [`header_text`] shows nested arrays and tables.
const MAX_HEADER_DEPTH: usize = 4;

/// A header value of any AMQP type as text: strings as they are (not made printable: do that
/// where it is shown), numbers, booleans and timestamps in decimal, byte arrays as UTF-8
/// (lossy), arrays as `[a, b]`, tables as `{k: v}` (nested at most a few levels, then `…`),
/// no value as the empty string.
pub fn header_text(value: &AmqpValue) -> String {
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

fn write_header_text(out: &mut String, value: &AmqpValue, depth: usize) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = match value {
        AmqpValue::LongString(s) => {
            out.push_str(s);
            Ok(())
        }
        AmqpValue::Boolean(b) => write!(out, "{b}"),
        AmqpValue::ShortShortInt(v) => write!(out, "{v}"),
        AmqpValue::ShortShortUInt(v) => write!(out, "{v}"),
        AmqpValue::ShortInt(v) => write!(out, "{v}"),
        AmqpValue::ShortUInt(v) => write!(out, "{v}"),
        AmqpValue::LongInt(v) => write!(out, "{v}"),
        AmqpValue::LongUInt(v) => write!(out, "{v}"),
        AmqpValue::LongLongInt(v) => write!(out, "{v}"),
        AmqpValue::Float(v) => write!(out, "{v}"),
        AmqpValue::Double(v) => write!(out, "{v}"),
        AmqpValue::Timestamp(v) => write!(out, "{v}"),
        AmqpValue::DecimalValue(d) => {
            out.push_str(&decimal_text(d.scale, d.value));
            Ok(())
        }
        AmqpValue::ByteArray(bytes) => {
            out.push_str(&String::from_utf8_lossy(bytes));
            Ok(())
        }
        AmqpValue::FieldArray(items) if depth < MAX_HEADER_DEPTH => {
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
        AmqpValue::FieldTable(table) if depth < MAX_HEADER_DEPTH => {
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
        AmqpValue::FieldArray(_) | AmqpValue::FieldTable(_) => {
            out.push('…');
            Ok(())
        }
        AmqpValue::Void => Ok(()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiquip::FieldTable;

    #[test]
    fn header_values_of_any_type_become_text() {
        use amiquip::AmqpValue as V;
        let mut table = FieldTable::new();
        table.insert("a".into(), V::LongLongInt(-3));
        table.insert("b".into(), V::FieldArray(vec![V::Boolean(true), V::Void]));
        let cases = [
            (V::LongString("x\ny".into()), "x\ny"),
            (V::ShortShortUInt(7), "7"),
            (V::Double(1.5), "1.5"),
            (V::Timestamp(1_700_000_000), "1700000000"),
            (V::ByteArray(b"ok\xff".to_vec()), "ok\u{fffd}"),
            (V::FieldTable(table), "{a: -3, b: [true, ]}"),
            (V::Void, ""),
        ];
        for (value, text) in cases {
            assert_eq!(header_text(&value), text, "{value:?}");
        }
        let mut deep = V::Boolean(false);
        for _ in 0..100 {
            deep = V::FieldArray(vec![deep]);
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
