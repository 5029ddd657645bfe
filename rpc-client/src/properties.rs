//! A message's properties and headers in our own types ([`Properties`], [`Headers`],
//! [`HeaderValue`]): the conversion between them and the AMQP library's is written here once.
//!
//! [`Properties`] wraps the library's properties as received, so a delivery costs no copy:
//! a property is read where it is asked for, and a header value is converted only when read
//! ([`Properties::header`]); [`Properties::header_str`] borrows a string header without any.

use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::collections::BTreeMap;

/// The properties of a message (request or reply): the fields this project reads and
/// writes, and the headers. Build one with the `with_` methods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties(AmqpProperties);

/// Reading a message's properties where they lie, without a copy. [`Properties`] implements
/// it (and has methods of the same names, no import needed), and so, for `rpc-server`, does the AMQP
/// library's own type: the rules of [`crate::wire`] read a delivery's properties through it.
pub trait ReadProperties {
    /// The AMQP library's properties. For `rpc-server`: no stability promise.
    #[doc(hidden)]
    fn amqp_properties(&self) -> &AmqpProperties;

    /// `correlation_id`: which call a reply answers.
    fn correlation_id(&self) -> Option<&str> {
        self.amqp_properties().correlation_id().as_deref()
    }

    /// `reply_to`: the queue a reply goes to.
    fn reply_to(&self) -> Option<&str> {
        self.amqp_properties().reply_to().as_deref()
    }

    /// `type`: the message type name.
    fn kind(&self) -> Option<&str> {
        self.amqp_properties().type_().as_deref()
    }

    /// `expiration`: milliseconds, as text.
    fn expiration(&self) -> Option<&str> {
        self.amqp_properties().expiration().as_deref()
    }

    /// `timestamp`, Unix seconds.
    fn timestamp(&self) -> Option<u64> {
        *self.amqp_properties().timestamp()
    }

    /// The value of header `name` if it is a string, borrowed.
    fn header_str(&self, name: &str) -> Option<&str> {
        match self.amqp_properties().headers().as_ref()?.get(name)? {
            AmqpValue::LongString(s) => Some(s),
            _ => None,
        }
    }

    /// The value of header `name` if it is an integer of any width that fits an `i64`.
    fn header_i64(&self, name: &str) -> Option<i64> {
        match *self.amqp_properties().headers().as_ref()?.get(name)? {
            AmqpValue::ShortShortInt(n) => Some(n.into()),
            AmqpValue::ShortShortUInt(n) => Some(n.into()),
            AmqpValue::ShortInt(n) => Some(n.into()),
            AmqpValue::ShortUInt(n) => Some(n.into()),
            AmqpValue::LongInt(n) => Some(n.into()),
            AmqpValue::LongUInt(n) => Some(n.into()),
            AmqpValue::LongLongInt(n) => Some(n),
            _ => None,
        }
    }

    /// Whether header `name` is present, whatever its value.
    fn has_header(&self, name: &str) -> bool {
        let headers = self.amqp_properties().headers().as_ref();
        headers.is_some_and(|t| t.contains_key(name))
    }

    /// How deep the headers nest: 0 without headers, 1 for a table of plain values, one more
    /// for each table or array in a table or array.
    fn header_depth(&self) -> usize {
        self.amqp_properties()
            .headers()
            .as_ref()
            .map_or(0, table_depth)
    }
}

impl ReadProperties for Properties {
    fn amqp_properties(&self) -> &AmqpProperties {
        &self.0
    }
}

/// For `rpc-server`: no stability promise.
#[doc(hidden)]
impl ReadProperties for AmqpProperties {
    fn amqp_properties(&self) -> &AmqpProperties {
        self
    }
}

/// A string property getter.
macro_rules! text_properties {
    ($($(#[$doc:meta])* $name:ident, $with:ident, $amqp:ident, $amqp_with:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self) -> Option<&str> {
            self.0.$amqp().as_deref()
        }

        /// Sets the property of the same name.
        #[must_use]
        pub fn $with(self, value: impl Into<String>) -> Self {
            Properties(self.0.$amqp_with(value.into()))
        }
    )*};
}

impl Properties {
    text_properties! {
        /// `correlation_id`: which call a reply answers.
        correlation_id, with_correlation_id, correlation_id, with_correlation_id;
        /// `reply_to`: the queue a reply goes to.
        reply_to, with_reply_to, reply_to, with_reply_to;
        /// `content_type`, e.g. `application/json`.
        content_type, with_content_type, content_type, with_content_type;
        /// `type`: the message type name (ours say they take error replies with it).
        kind, with_kind, type_, with_type_;
        /// `expiration`: milliseconds, as text, after which the broker drops the message.
        expiration, with_expiration, expiration, with_expiration;
        /// `user_id`: the user that published, which the broker checks against the login.
        user_id, with_user_id, user_id, with_user_id;
        /// `message_id`.
        message_id, with_message_id, message_id, with_message_id;
        /// `app_id`.
        app_id, with_app_id, app_id, with_app_id;
        /// `content_encoding`.
        content_encoding, with_content_encoding, content_encoding, with_content_encoding;
    }

    /// `timestamp`, Unix seconds.
    pub fn timestamp(&self) -> Option<u64> {
        ReadProperties::timestamp(self)
    }

    /// Sets `timestamp`.
    #[must_use]
    pub fn with_timestamp(self, seconds: u64) -> Self {
        Properties(self.0.with_timestamp(seconds))
    }

    /// `delivery_mode`: 2 is persistent.
    pub fn delivery_mode(&self) -> Option<u8> {
        *self.0.delivery_mode()
    }

    /// Sets `delivery_mode`.
    #[must_use]
    pub fn with_delivery_mode(self, mode: u8) -> Self {
        Properties(self.0.with_delivery_mode(mode))
    }

    /// `priority`.
    pub fn priority(&self) -> Option<u8> {
        *self.0.priority()
    }

    /// Sets `priority`.
    #[must_use]
    pub fn with_priority(self, priority: u8) -> Self {
        Properties(self.0.with_priority(priority))
    }

    /// Sets the headers (replacing any).
    #[must_use]
    pub fn with_headers(self, headers: Headers) -> Self {
        Properties(self.0.with_headers(headers.0))
    }

    /// The headers, as a copy: empty when the message had none. To read one header,
    /// [`Properties::header`] or [`Properties::header_str`] copy less.
    pub fn headers(&self) -> Headers {
        Headers(self.table().cloned().unwrap_or_default())
    }

    /// Each header, by name in byte order, its value converted as it is reached; `None` when
    /// the message has no headers table (an empty one gives an empty iterator).
    pub fn header_entries(&self) -> Option<impl Iterator<Item = (&str, HeaderValue)> + '_> {
        let table = self.table()?;
        Some(
            table
                .iter()
                .map(|(name, value)| (name.as_str(), HeaderValue::from_amqp(value))),
        )
    }

    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<HeaderValue> {
        self.table()?.get(name).map(HeaderValue::from_amqp)
    }

    /// The value of header `name` if it is a string, borrowed (no copy).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        ReadProperties::header_str(self, name)
    }

    /// The value of header `name` if it is an integer of any width that fits an `i64`
    /// (no copy).
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        ReadProperties::header_i64(self, name)
    }

    /// Whether header `name` is present, whatever its value.
    pub fn has_header(&self, name: &str) -> bool {
        ReadProperties::has_header(self, name)
    }

    /// The headers' table, if any.
    fn table(&self) -> Option<&FieldTable> {
        self.0.headers().as_ref()
    }

    /// How deep the headers nest: 0 without headers, 1 for a table of plain values, one more
    /// for each table or array in a table or array.
    pub fn header_depth(&self) -> usize {
        ReadProperties::header_depth(self)
    }

    /// The same properties without `user_id`.
    #[must_use]
    pub fn without_user_id(self) -> Self {
        let p = self.0;
        let mut copy = AmqpProperties::default();
        if let Some(v) = p.content_type() {
            copy = copy.with_content_type(v.clone());
        }
        if let Some(v) = p.content_encoding() {
            copy = copy.with_content_encoding(v.clone());
        }
        if let Some(v) = p.headers() {
            copy = copy.with_headers(v.clone());
        }
        if let Some(v) = p.delivery_mode() {
            copy = copy.with_delivery_mode(*v);
        }
        if let Some(v) = p.priority() {
            copy = copy.with_priority(*v);
        }
        if let Some(v) = p.correlation_id() {
            copy = copy.with_correlation_id(v.clone());
        }
        if let Some(v) = p.reply_to() {
            copy = copy.with_reply_to(v.clone());
        }
        if let Some(v) = p.expiration() {
            copy = copy.with_expiration(v.clone());
        }
        if let Some(v) = p.message_id() {
            copy = copy.with_message_id(v.clone());
        }
        if let Some(v) = p.timestamp() {
            copy = copy.with_timestamp(*v);
        }
        if let Some(v) = p.type_() {
            copy = copy.with_type_(v.clone());
        }
        if let Some(v) = p.app_id() {
            copy = copy.with_app_id(v.clone());
        }
        if let Some(v) = p.cluster_id() {
            copy = copy.with_cluster_id(v.clone());
        }
        Properties(copy)
    }

    /// From the AMQP library's properties. For `rpc-server`: no stability promise.
    #[doc(hidden)]
    pub fn from_amqp(properties: AmqpProperties) -> Self {
        Properties(properties)
    }

    /// Lends the AMQP library's properties of a delivery to `f` as ours, without a copy (they
    /// are moved out and back). For `rpc-server`: no stability promise.
    #[doc(hidden)]
    pub fn lend<R>(properties: &mut AmqpProperties, f: impl FnOnce(&Properties) -> R) -> R {
        let ours = Properties(std::mem::take(properties));
        let result = f(&ours);
        *properties = ours.0;
        result
    }

    /// As the AMQP library's properties. For `rpc-server`: no stability promise.
    #[doc(hidden)]
    pub fn amqp(&self) -> &AmqpProperties {
        &self.0
    }

    /// Into the AMQP library's properties. For `rpc-server`: no stability promise.
    #[doc(hidden)]
    pub fn into_amqp(self) -> AmqpProperties {
        self.0
    }
}

/// How deep `table` nests: 1 for a table of plain values, one more for each table or array in
/// a table or array (the `headers` table itself is level 1). Walks without recursion, so any
/// depth is safe.
pub(crate) fn table_depth(table: &FieldTable) -> usize {
    fn nested(value: &AmqpValue) -> bool {
        matches!(value, AmqpValue::FieldTable(_) | AmqpValue::FieldArray(_))
    }
    let mut deepest = 1;
    // Only tables and arrays are pushed: plain headers cost no allocation.
    let mut inside: Vec<(&AmqpValue, usize)> = Vec::new();
    inside.extend(table.values().filter(|v| nested(v)).map(|v| (v, 2)));
    while let Some((value, depth)) = inside.pop() {
        deepest = deepest.max(depth);
        match value {
            AmqpValue::FieldTable(t) => {
                inside.extend(t.values().filter(|v| nested(v)).map(|v| (v, depth + 1)));
            }
            AmqpValue::FieldArray(a) => {
                inside.extend(a.iter().filter(|v| nested(v)).map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// For tests and `rpc-server`: no stability promise.
#[doc(hidden)]
impl From<AmqpProperties> for Properties {
    fn from(properties: AmqpProperties) -> Self {
        Properties(properties)
    }
}

/// A message's headers: names to typed values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers(FieldTable);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(FieldTable::new())
    }

    /// Sets header `name` to `value` (replacing any).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        self.0.insert(name.into(), value.into().into_amqp());
    }

    /// Removes header `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// The value of header `name`, if present.
    pub fn get(&self, name: &str) -> Option<HeaderValue> {
        self.0.get(name).map(HeaderValue::from_amqp)
    }

    /// The value of header `name` if it is a string, borrowed.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.0.get(name)? {
            AmqpValue::LongString(s) => Some(s),
            _ => None,
        }
    }

    /// Each header, by name in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, HeaderValue)> + '_ {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), HeaderValue::from_amqp(value)))
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<HeaderValue>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.insert(name, value);
        }
        headers
    }
}

/// The value of a header: one of the types an AMQP field table carries.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    /// A boolean.
    Bool(bool),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A decimal: `value` × 10^-`scale`.
    Decimal {
        /// How many decimal places.
        scale: u8,
        /// The digits.
        value: u32,
    },
    /// A string (AMQP's long string).
    Str(String),
    /// Bytes (RabbitMQ's byte array).
    Bytes(Vec<u8>),
    /// A timestamp, Unix seconds.
    Timestamp(u64),
    /// An array of values.
    Array(Vec<HeaderValue>),
    /// A table of named values.
    Table(BTreeMap<String, HeaderValue>),
    /// No value.
    Void,
}

impl HeaderValue {
    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value if it is an integer of any width that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            HeaderValue::I8(n) => Some(n.into()),
            HeaderValue::U8(n) => Some(n.into()),
            HeaderValue::I16(n) => Some(n.into()),
            HeaderValue::U16(n) => Some(n.into()),
            HeaderValue::I32(n) => Some(n.into()),
            HeaderValue::U32(n) => Some(n.into()),
            HeaderValue::I64(n) => Some(n),
            _ => None,
        }
    }

    /// Converts a value as the AMQP library decoded it.
    fn from_amqp(value: &AmqpValue) -> HeaderValue {
        use AmqpValue as A;
        match value {
            A::Boolean(b) => HeaderValue::Bool(*b),
            A::ShortShortInt(n) => HeaderValue::I8(*n),
            A::ShortShortUInt(n) => HeaderValue::U8(*n),
            A::ShortInt(n) => HeaderValue::I16(*n),
            A::ShortUInt(n) => HeaderValue::U16(*n),
            A::LongInt(n) => HeaderValue::I32(*n),
            A::LongUInt(n) => HeaderValue::U32(*n),
            A::LongLongInt(n) => HeaderValue::I64(*n),
            A::Float(n) => HeaderValue::F32(*n),
            A::Double(n) => HeaderValue::F64(*n),
            A::DecimalValue(d) => HeaderValue::Decimal {
                scale: d.scale,
                value: d.value,
            },
            A::LongString(s) => HeaderValue::Str(s.clone()),
            A::ByteArray(b) => HeaderValue::Bytes(b.clone()),
            A::Timestamp(t) => HeaderValue::Timestamp(*t),
            A::FieldArray(items) => {
                HeaderValue::Array(items.iter().map(HeaderValue::from_amqp).collect())
            }
            A::FieldTable(table) => HeaderValue::Table(
                table
                    .iter()
                    .map(|(k, v)| (k.clone(), HeaderValue::from_amqp(v)))
                    .collect(),
            ),
            A::Void => HeaderValue::Void,
        }
    }

    /// Into a value the AMQP library encodes.
    fn into_amqp(self) -> AmqpValue {
        use AmqpValue as A;
        match self {
            HeaderValue::Bool(b) => A::Boolean(b),
            HeaderValue::I8(n) => A::ShortShortInt(n),
            HeaderValue::U8(n) => A::ShortShortUInt(n),
            HeaderValue::I16(n) => A::ShortInt(n),
            HeaderValue::U16(n) => A::ShortUInt(n),
            HeaderValue::I32(n) => A::LongInt(n),
            HeaderValue::U32(n) => A::LongUInt(n),
            HeaderValue::I64(n) => A::LongLongInt(n),
            HeaderValue::F32(n) => A::Float(n),
            HeaderValue::F64(n) => A::Double(n),
            HeaderValue::Decimal { scale, value } => {
                A::DecimalValue(amq_protocol::types::DecimalValue { scale, value })
            }
            HeaderValue::Str(s) => A::LongString(s),
            HeaderValue::Bytes(b) => A::ByteArray(b),
            HeaderValue::Timestamp(t) => A::Timestamp(t),
            HeaderValue::Array(items) => {
                A::FieldArray(items.into_iter().map(HeaderValue::into_amqp).collect())
            }
            HeaderValue::Table(table) => {
                A::FieldTable(table.into_iter().map(|(k, v)| (k, v.into_amqp())).collect())
            }
            HeaderValue::Void => A::Void,
        }
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_string())
    }
}

impl From<i64> for HeaderValue {
    fn from(n: i64) -> Self {
        HeaderValue::I64(n)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

impl From<Headers> for HeaderValue {
    /// A table of these headers.
    fn from(headers: Headers) -> Self {
        HeaderValue::Table(
            headers
                .0
                .iter()
                .map(|(k, v)| (k.clone(), HeaderValue::from_amqp(v)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value goes to the library's type and back unchanged, nested ones included.
    #[test]
    fn values_convert_both_ways() {
        let mut inner = BTreeMap::new();
        inner.insert("a".to_string(), HeaderValue::I32(-3));
        let values = [
            HeaderValue::Bool(true),
            HeaderValue::I8(-1),
            HeaderValue::U8(1),
            HeaderValue::I16(-2),
            HeaderValue::U16(2),
            HeaderValue::I32(-4),
            HeaderValue::U32(4),
            HeaderValue::I64(-8),
            HeaderValue::F32(1.5),
            HeaderValue::F64(2.5),
            HeaderValue::Decimal {
                scale: 2,
                value: 314,
            },
            HeaderValue::Str("s".into()),
            HeaderValue::Bytes(vec![0, 255]),
            HeaderValue::Timestamp(7),
            HeaderValue::Array(vec![HeaderValue::Void, HeaderValue::Table(inner)]),
            HeaderValue::Void,
        ];
        for value in values {
            assert_eq!(HeaderValue::from_amqp(&value.clone().into_amqp()), value);
        }
    }

    /// Headers set are read back, as values and as borrowed strings; depth counts nesting.
    #[test]
    fn headers_are_read_back() {
        let mut headers = Headers::new();
        headers.insert("s", "x");
        headers.insert("n", 9_i64);
        let properties = Properties::default()
            .with_correlation_id("id")
            .with_headers(headers.clone());
        assert_eq!(properties.correlation_id(), Some("id"));
        assert_eq!(properties.header_str("s"), Some("x"));
        assert_eq!(properties.header_str("n"), None);
        assert_eq!(properties.header("n").and_then(|v| v.as_i64()), Some(9));
        assert!(properties.has_header("n") && !properties.has_header("m"));
        assert_eq!(properties.headers(), headers);
        assert_eq!(properties.header_depth(), 1);
        assert_eq!(Properties::default().header_depth(), 0);
        let nested = Headers::from_iter([("t", HeaderValue::from(headers))]);
        assert_eq!(Properties::default().with_headers(nested).header_depth(), 2);
    }
}
