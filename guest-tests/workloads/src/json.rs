//! A small JSON object writer over [`core::fmt::Write`]: no allocation, keys
//! in the order written, strings escaped. Numbers are integers only; values
//! with a fractional part are written as fixed-point hundredths
//! ([`Object::hundredths`]) so output never depends on float formatting.

use core::fmt::{self, Write};

/// Writes one JSON object: `{` on creation, `}` on [`Object::finish`].
/// The first write error is kept and returned by `finish`.
pub struct Object<'w, W: Write + ?Sized> {
    out: &'w mut W,
    first: bool,
    result: fmt::Result,
}

impl<'w, W: Write + ?Sized> Object<'w, W> {
    /// Starts an object.
    pub fn new(out: &'w mut W) -> Self {
        let result = out.write_char('{');
        Object {
            out,
            first: true,
            result,
        }
    }

    fn key(&mut self, key: &str) -> &mut W {
        if self.result.is_ok() {
            let sep = if self.first { "" } else { "," };
            self.first = false;
            self.result = write!(self.out, "{sep}\"{key}\":");
        }
        self.out
    }

    fn value(&mut self, key: &str, args: fmt::Arguments<'_>) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = self.out.write_fmt(args);
        }
        self
    }

    /// `"key":"value"`, escaped.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.display(key, value)
    }

    /// `"key":"<value formatted with Display>"`, escaped.
    pub fn display(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = write_escaped(self.out, value);
        }
        self
    }

    /// `"key":N`.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.value(key, format_args!("{value}"))
    }

    /// `"key":N` (signed).
    pub fn i64(&mut self, key: &str, value: i64) -> &mut Self {
        self.value(key, format_args!("{value}"))
    }

    /// `"key":N` if `Some`, else `"key":null`.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.u64(key, v),
            None => self.value(key, format_args!("null")),
        }
    }

    /// `"key":true|false`.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.value(key, format_args!("{value}"))
    }

    /// `"key":12.34` from 1234 hundredths: an exact decimal with two places.
    pub fn hundredths(&mut self, key: &str, hundredths: i64) -> &mut Self {
        let sign = if hundredths < 0 { "-" } else { "" };
        let abs = hundredths.unsigned_abs();
        self.value(key, format_args!("{sign}{}.{:02}", abs / 100, abs % 100))
    }

    /// `"key":[a,b,...]`.
    pub fn u64_array(&mut self, key: &str, values: impl IntoIterator<Item = u64>) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char('[')?;
                for (i, v) in values.into_iter().enumerate() {
                    if i > 0 {
                        self.out.write_char(',')?;
                    }
                    write!(self.out, "{v}")?;
                }
                self.out.write_char(']')
            })();
        }
        self
    }

    /// `"key":{...}`, the nested object written by `fill`.
    pub fn object(&mut self, key: &str, fill: impl FnOnce(&mut Object<'_, W>)) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            let mut inner = Object::new(&mut *self.out);
            fill(&mut inner);
            self.result = inner.finish();
        }
        self
    }

    /// Closes the object; returns the first error met while writing it.
    pub fn finish(self) -> fmt::Result {
        self.result?;
        self.out.write_char('}')
    }
}

/// Writes `value` as a JSON string literal (quotes included).
fn write_escaped<W: Write + ?Sized>(out: &mut W, value: impl fmt::Display) -> fmt::Result {
    struct Escaper<'a, W: Write + ?Sized>(&'a mut W);
    impl<W: Write + ?Sized> Write for Escaper<'_, W> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                match c {
                    '"' => self.0.write_str("\\\"")?,
                    '\\' => self.0.write_str("\\\\")?,
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        write!(self.0, "\\u{:04x}", c as u32)?
                    }
                    c => self.0.write_char(c)?,
                }
            }
            Ok(())
        }
    }
    out.write_char('"')?;
    write!(Escaper(out), "{value}")?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::LineBuf;

    fn render(fill: impl FnOnce(&mut Object<'_, LineBuf<256>>)) -> LineBuf<256> {
        let mut buf = LineBuf::<256>::new();
        let mut o = Object::new(&mut buf);
        fill(&mut o);
        o.finish().unwrap();
        buf
    }

    #[test]
    fn writes_fields_in_order_with_commas() {
        let b = render(|o| {
            o.str("event", "ready")
                .u64("cpus", 2)
                .bool("ok", true)
                .i64("d", -3);
        });
        assert_eq!(b.as_str(), r#"{"event":"ready","cpus":2,"ok":true,"d":-3}"#);
    }

    #[test]
    fn empty_object() {
        assert_eq!(render(|_| {}).as_str(), "{}");
    }

    #[test]
    fn escapes_strings() {
        let b = render(|o| {
            o.str("m", "a\"b\\c\nd\u{1}");
        });
        assert_eq!(b.as_str(), r#"{"m":"a\"b\\c\nd\u0001"}"#);
    }

    #[test]
    fn hundredths_are_exact() {
        let b = render(|o| {
            o.hundredths("a", 9987)
                .hundredths("b", 5)
                .hundredths("c", -250)
                .hundredths("z", 0);
        });
        assert_eq!(b.as_str(), r#"{"a":99.87,"b":0.05,"c":-2.50,"z":0.00}"#);
    }

    #[test]
    fn nested_objects_arrays_and_nulls() {
        let b = render(|o| {
            o.object("first_bad", |f| {
                f.u64("page", 7).str("reason", "torn");
            })
            .u64_array("busy", [0, 2])
            .u64_array("none", [])
            .opt_u64("x", None)
            .opt_u64("y", Some(4));
        });
        assert_eq!(
            b.as_str(),
            r#"{"first_bad":{"page":7,"reason":"torn"},"busy":[0,2],"none":[],"x":null,"y":4}"#
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let mut buf = LineBuf::<8>::new();
        let mut o = Object::new(&mut buf);
        o.str("key", "a long value");
        assert!(o.finish().is_err());
    }
}
