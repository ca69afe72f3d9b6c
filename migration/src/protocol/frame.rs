//! Framing: every message is `kind: u16, flags: u16, len: u32`, then `len`
//! payload bytes, then a CRC-32 of header and payload. A reader rejects an
//! unknown kind, an oversized length or a bad checksum before acting on
//! anything in the frame, and says at which stream offset.

use std::io::{self, IoSlice, Read, Write};

use super::ProtocolError;
use crate::stream_input::StreamInput;

/// Header bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry (a page run of 256 pages plus its header fits).
pub const MAX_PAYLOAD: u32 = 4 << 20;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Message kind.
    pub kind: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Frames up to this size are gathered in the writer's buffer; a frame that
/// would overflow it goes out with the buffer in one gathered write, so page
/// runs are never copied in user space.
const WRITE_BUFFER: usize = 256 << 10;

/// Writes frames, buffering small ones (call [`FrameWriter::flush`] to send
/// them) and counting bytes.
pub struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes one frame whose payload is the concatenation of `parts`.
    pub fn write_frame(&mut self, kind: u16, parts: &[&[u8]]) -> io::Result<()> {
        let (header, len) = frame_header(kind, parts)?;
        let frame_len = HEADER_LEN + len + 4;
        if self.buf.len() + frame_len <= WRITE_BUFFER {
            append_frame(&mut self.buf, kind, parts)?;
        } else {
            let crc = frame_crc(&header, parts).to_le_bytes();
            let mut slices = Vec::with_capacity(parts.len() + 3);
            slices.push(IoSlice::new(&self.buf));
            slices.push(IoSlice::new(&header));
            slices.extend(parts.iter().map(|p| IoSlice::new(p)));
            slices.push(IoSlice::new(&crc));
            write_all_vectored(&mut self.inner, &mut slices, None)?;
            self.buf.clear();
        }
        self.written += frame_len as u64;
        Ok(())
    }

    /// Sends buffered frames.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.inner.flush()
    }

    /// The underlying stream (frames not yet flushed are not in it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Appends one whole frame of `kind` whose payload is the concatenation of
/// `parts` to `out`; returns its length in bytes.
pub fn append_frame(out: &mut Vec<u8>, kind: u16, parts: &[&[u8]]) -> io::Result<usize> {
    let (header, len) = frame_header(kind, parts)?;
    let crc = frame_crc(&header, parts).to_le_bytes();
    out.extend_from_slice(&header);
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out.extend_from_slice(&crc);
    Ok(HEADER_LEN + len + 4)
}

/// The header of a frame of `kind` whose payload is `parts`, and the payload's length.
fn frame_header(kind: u16, parts: &[&[u8]]) -> io::Result<([u8; HEADER_LEN], usize)> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_PAYLOAD as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame payload too large",
        ));
    }
    Ok((header_bytes(kind, len as u32), len))
}

/// The header of a frame of `kind` with a `len`-byte payload.
pub(crate) fn header_bytes(kind: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&kind.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header
}

fn frame_crc(header: &[u8], parts: &[&[u8]]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    for p in parts {
        crc.update(p);
    }
    crc.finalize()
}

/// `Write::write_all_vectored`, which is not stable yet; past `deadline`, a
/// write left partial ends it with `TimedOut`.
pub fn write_all_vectored<W: Write>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
    deadline: Option<std::time::Instant>,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A frame whose header was read and checked, its payload being read in parts.
#[derive(Debug)]
pub struct PartialFrame {
    kind: u16,
    len: u32,
    /// Stream offset of its header.
    start: u64,
    /// Payload bytes not read yet.
    remaining: u32,
    crc: crc32fast::Hasher,
}

impl PartialFrame {
    /// Message kind.
    pub fn kind(&self) -> u16 {
        self.kind
    }

    /// Payload length.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads frames, tracking the stream offset for error messages.
pub struct FrameReader<R: Read> {
    inner: R,
    offset: u64,
    valid_kinds: fn(u16) -> bool,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream; `valid_kinds` says which kinds this side accepts.
    pub fn new(inner: R, valid_kinds: fn(u16) -> bool) -> Self {
        FrameReader {
            inner,
            offset: 0,
            valid_kinds,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` from the stream; with `crc`, checksums each piece as it arrives (while it is
    /// still in the cache).
    fn fill(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
        at_start: bool,
        mut crc: Option<&mut crc32fast::Hasher>,
    ) -> Result<(), ProtocolError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if at_start && got == 0 => return Err(ProtocolError::PeerClosed),
                Ok(0) => {
                    return Err(ProtocolError::Truncated {
                        offset: self.offset + got as u64,
                        what,
                    })
                }
                Ok(n) => {
                    if let Some(crc) = crc.as_deref_mut() {
                        crc.update(&buf[got..got + n]);
                    }
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::Io(e)),
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Reads the next frame, reusing `payload`'s allocation.
    pub fn read_frame_into(&mut self, payload: &mut Vec<u8>) -> Result<u16, ProtocolError> {
        let mut frame = self.begin_frame()?;
        // Only growth is zero-filled; the rest is overwritten by the read.
        payload.resize(frame.len() as usize, 0);
        self.read_part(&mut frame, payload)?;
        let kind = frame.kind();
        self.finish_frame(frame)?;
        Ok(kind)
    }

    /// Reads and checks the next frame's header (kind, reserved bits, length) and starts its
    /// checksum. The payload follows in parts ([`FrameReader::read_part`]) straight into the
    /// caller's buffers, and [`FrameReader::finish_frame`] checks the checksum: until then the
    /// bytes read are unverified.
    pub fn begin_frame(&mut self) -> Result<PartialFrame, ProtocolError> {
        let start = self.offset;
        let mut header = [0u8; HEADER_LEN];
        self.fill(&mut header, "frame header", true, None)?;
        let kind = u16::from_le_bytes([header[0], header[1]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(self.valid_kinds)(kind) {
            return Err(ProtocolError::Corrupt {
                offset: start,
                what: format!("unknown message kind {kind}"),
            });
        }
        if header[2] != 0 || header[3] != 0 {
            return Err(ProtocolError::Corrupt {
                offset: start,
                what: "nonzero reserved header bits".into(),
            });
        }
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::Corrupt {
                offset: start,
                what: format!("frame length {len} exceeds {MAX_PAYLOAD}"),
            });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        Ok(PartialFrame {
            kind,
            len,
            start,
            remaining: len,
            crc,
        })
    }

    /// Reads the next `buf.len()` payload bytes of `frame` into `buf`.
    pub fn read_part(
        &mut self,
        frame: &mut PartialFrame,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if buf.len() > frame.remaining as usize {
            return Err(ProtocolError::Corrupt {
                offset: self.offset,
                what: format!(
                    "a kind-{} frame of {} bytes has {} payload bytes left, {} wanted",
                    frame.kind,
                    frame.len,
                    frame.remaining,
                    buf.len()
                ),
            });
        }
        self.fill(buf, "frame payload", false, Some(&mut frame.crc))?;
        frame.remaining -= buf.len() as u32;
        Ok(())
    }

    /// Reads `frame`'s checksum and compares it with what was read; every payload byte must
    /// have been read.
    pub fn finish_frame(&mut self, frame: PartialFrame) -> Result<(), ProtocolError> {
        if frame.remaining != 0 {
            return Err(ProtocolError::Corrupt {
                offset: self.offset,
                what: format!(
                    "{} payload bytes of a kind-{} frame of {} bytes left unread",
                    frame.remaining, frame.kind, frame.len
                ),
            });
        }
        let mut crc_bytes = [0u8; 4];
        self.fill(&mut crc_bytes, "frame checksum", false, None)?;
        if frame.crc.finalize() != u32::from_le_bytes(crc_bytes) {
            return Err(ProtocolError::Corrupt {
                offset: frame.start,
                what: format!(
                    "checksum mismatch in a kind-{} frame of {} bytes",
                    frame.kind, frame.len
                ),
            });
        }
        Ok(())
    }

    /// Reads the next frame.
    pub fn read_frame(&mut self) -> Result<Frame, ProtocolError> {
        let mut payload = Vec::new();
        let kind = self.read_frame_into(&mut payload)?;
        Ok(Frame { kind, payload })
    }
}

impl<R: StreamInput> FrameReader<R> {
    /// Reads some of the bytes that follow a frame outside it (a page run's
    /// data pages) into `buf`, at least one, at most `buf.len()`, where the
    /// frame promised `due` more (see [`StreamInput::read_due`]); the stream
    /// ending first is an error.
    pub fn read_unframed(&mut self, buf: &mut [u8], due: usize) -> Result<usize, ProtocolError> {
        loop {
            match self.inner.read_due(buf, due) {
                Ok(0) if !buf.is_empty() => {
                    return Err(ProtocolError::Truncated {
                        offset: self.offset,
                        what: "page data",
                    })
                }
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: u16) -> bool {
        true
    }

    fn one_frame() -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new());
        w.write_frame(7, &[b"hello ", b"world"]).unwrap();
        w.flush().unwrap();
        w.get_mut().clone()
    }

    #[test]
    fn roundtrip() {
        let bytes = one_frame();
        let mut r = FrameReader::new(&bytes[..], any);
        let f = r.read_frame().unwrap();
        assert_eq!(
            f,
            Frame {
                kind: 7,
                payload: b"hello world".to_vec()
            }
        );
        assert!(matches!(r.read_frame(), Err(ProtocolError::PeerClosed)));
    }

    #[test]
    fn appended_frames_are_what_the_writer_writes() {
        let mut out = vec![1, 2, 3];
        assert_eq!(
            append_frame(&mut out, 7, &[b"hello ", b"world"]).unwrap(),
            one_frame().len()
        );
        append_frame(&mut out, 7, &[b"hello world"]).unwrap();
        assert_eq!(out, [&[1, 2, 3][..], &one_frame(), &one_frame()].concat());
        let big = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(append_frame(&mut out, 7, &[&big]).is_err());
        assert_eq!(
            out.len(),
            3 + 2 * one_frame().len(),
            "nothing of it appended"
        );
    }

    /// A stream that takes at most 3 bytes per write, and is interrupted
    /// every other call.
    struct Trickle {
        out: Vec<u8>,
        calls: u32,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_and_interrupted_writes_still_write_the_whole_frame() {
        let mut w = FrameWriter::new(Trickle {
            out: Vec::new(),
            calls: 0,
        });
        w.write_frame(7, &[b"hello ", b"", b"world"]).unwrap();
        w.flush().unwrap();
        assert_eq!(w.get_mut().out, one_frame());
        assert_eq!(w.bytes_written(), one_frame().len() as u64);
        // A frame bigger than the buffer goes out with what is buffered, in order.
        let big = vec![9u8; WRITE_BUFFER];
        w.write_frame(1, &[b"small"]).unwrap();
        w.write_frame(2, &[&big[..1000], &big[1000..]]).unwrap();
        w.flush().unwrap();
        let mut r = FrameReader::new(&w.get_mut().out[one_frame().len()..], any);
        assert_eq!(r.read_frame().unwrap().payload, b"small");
        assert_eq!(r.read_frame().unwrap().payload, big);
        assert!(matches!(r.read_frame(), Err(ProtocolError::PeerClosed)));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = one_frame();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let r = FrameReader::new(&b[..], any).read_frame();
                assert!(r.is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn truncation_names_the_offset() {
        let bytes = one_frame();
        for cut in 1..bytes.len() {
            match FrameReader::new(&bytes[..cut], any).read_frame() {
                Err(ProtocolError::Truncated { offset, .. }) => assert!(offset <= cut as u64),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_length_is_rejected_before_allocating() {
        let mut h = vec![1u8, 0, 0, 0];
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameReader::new(&h[..], any).read_frame(),
            Err(ProtocolError::Corrupt { .. })
        ));
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        let bytes = one_frame();
        let r = FrameReader::new(&bytes[..], |k| k == 1).read_frame();
        assert!(matches!(r, Err(ProtocolError::Corrupt { offset: 0, .. })));
    }

    #[test]
    fn a_frame_read_in_parts_is_checked_at_its_end() {
        let bytes = one_frame();
        let mut r = FrameReader::new(&bytes[..], any);
        let mut f = r.begin_frame().unwrap();
        assert_eq!((f.kind(), f.len()), (7, 11));
        let (mut a, mut b) = ([0u8; 6], [0u8; 5]);
        r.read_part(&mut f, &mut a).unwrap();
        r.read_part(&mut f, &mut b).unwrap();
        assert_eq!((&a, &b), (b"hello ", b"world"));
        r.finish_frame(f).unwrap();
        assert_eq!(r.offset(), bytes.len() as u64);

        // A corrupt payload byte is only found at the end, by the checksum.
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 2] ^= 1;
        let mut r = FrameReader::new(&bad[..], any);
        let mut f = r.begin_frame().unwrap();
        let mut all = [0u8; 11];
        r.read_part(&mut f, &mut all).unwrap();
        assert!(matches!(
            r.finish_frame(f),
            Err(ProtocolError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn parts_cannot_read_past_the_payload_or_leave_it_unread() {
        let bytes = one_frame();
        let mut r = FrameReader::new(&bytes[..], any);
        let mut f = r.begin_frame().unwrap();
        let mut too_much = [0u8; 12];
        assert!(matches!(
            r.read_part(&mut f, &mut too_much),
            Err(ProtocolError::Corrupt { .. })
        ));
        let mut some = [0u8; 4];
        r.read_part(&mut f, &mut some).unwrap();
        assert!(matches!(
            r.finish_frame(f),
            Err(ProtocolError::Corrupt { .. })
        ));
    }
}
