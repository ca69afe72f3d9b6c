//! Fixed-capacity text buffers: [`LineBuf`] formats one output line without
//! allocating; [`LineReader`] assembles input bytes into command lines.

use core::fmt;

/// A `fmt::Write` sink into an inline array. Writing past the capacity is an
/// error (and leaves the buffer marked as overflowed), never a truncation
/// that could pass for a complete line.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> LineBuf<N> {
    pub const fn new() -> Self {
        LineBuf {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended, so the bytes are UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if self.overflowed || end > N {
            self.overflowed = true;
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// What [`LineReader::push`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Nothing complete yet.
    Pending,
    /// A complete line (without the line ending), trimmed of spaces.
    Line(&'a str),
    /// A line longer than the buffer (or not UTF-8) ended; it was dropped.
    Rejected,
}

/// Collects bytes into lines ended by `\n` or `\r` (empty lines are skipped).
pub struct LineReader<const N: usize> {
    buf: [u8; N],
    len: usize,
    overlong: bool,
}

impl<const N: usize> LineReader<N> {
    pub const fn new() -> Self {
        LineReader {
            buf: [0; N],
            len: 0,
            overlong: false,
        }
    }

    /// Feeds one byte.
    pub fn push(&mut self, byte: u8) -> Input<'_> {
        if byte != b'\n' && byte != b'\r' {
            if self.len < N {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overlong = true;
            }
            return Input::Pending;
        }
        let (len, overlong) = (self.len, self.overlong);
        self.len = 0;
        self.overlong = false;
        if overlong {
            return Input::Rejected;
        }
        match core::str::from_utf8(&self.buf[..len]) {
            Ok(s) if s.trim().is_empty() => Input::Pending,
            Ok(s) => Input::Line(s.trim()),
            Err(_) => Input::Rejected,
        }
    }
}

impl<const N: usize> Default for LineReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn linebuf_formats_and_rejects_overflow() {
        let mut b = LineBuf::<8>::new();
        write!(b, "ab{}", 12).unwrap();
        assert_eq!(b.as_str(), "ab12");
        assert!(write!(b, "12345").is_err());
        assert!(b.overflowed());
        assert_eq!(b.as_str(), "ab12");
        b.clear();
        write!(b, "x").unwrap();
        assert_eq!(b.as_str(), "x");
    }

    fn feed<'a, const N: usize>(r: &'a mut LineReader<N>, bytes: &[u8]) -> Option<Input<'a>> {
        let (last, head) = bytes.split_last()?;
        for &b in head {
            assert_eq!(r.push(b), Input::Pending);
        }
        Some(r.push(*last))
    }

    #[test]
    fn reader_splits_lines_and_skips_blank_ones() {
        let mut r = LineReader::<16>::new();
        assert_eq!(feed(&mut r, b" verify \r"), Some(Input::Line("verify")));
        assert_eq!(r.push(b'\n'), Input::Pending);
        assert_eq!(feed(&mut r, b"stop\n"), Some(Input::Line("stop")));
    }

    #[test]
    fn reader_rejects_overlong_and_recovers() {
        let mut r = LineReader::<4>::new();
        assert_eq!(feed(&mut r, b"toolong\n"), Some(Input::Rejected));
        assert_eq!(feed(&mut r, b"ok\n"), Some(Input::Line("ok")));
        assert_eq!(feed(&mut r, &[0xff, b'\n']), Some(Input::Rejected));
    }
}
