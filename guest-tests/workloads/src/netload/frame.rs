//! The Ethernet frames of the net workload (EtherType 0x88b5, "local
//! experimental"). Byte layout, numbers little endian after the EtherType:
//!
//! ```text
//!  0  destination MAC     6  source MAC     12  EtherType 0x88b5 (big endian)
//! 14  MAGIC "ternNET1"   22  run id        30  sequence number
//! 38  kind               39  sender's TSC  47  checksum of bytes 14..47 and 55..
//! 55  padding to the frame size: (seq + i) as u8
//! ```
//!
//! A **peer** echoes the guest's `probe` frames back unchanged except for
//! the MAC addresses (destination = the frame's source), and may send
//! frames of its own with kind `peer`, its own run id, and sequence numbers
//! counting up from 0.

use crate::page::mix;

pub const ETHERTYPE: u16 = 0x88b5;
const MAGIC: u64 = u64::from_be_bytes(*b"ternNET1");
pub const HEADER_BYTES: usize = 55;
pub const MIN_FRAME: usize = 64;
pub const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sent by the guest, to be echoed back.
    Probe,
    /// Sent by the peer on its own.
    Peer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub run_id: u64,
    pub seq: u64,
    pub kind: Kind,
    pub sent_tsc: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not a tern frame (another EtherType or no magic).
    Foreign,
    Short,
    BadChecksum,
}

fn checksum(frame: &[u8]) -> u64 {
    let fold = |acc: u64, b: &u8| acc.rotate_left(5) ^ u64::from(*b);
    let head = frame[14..47].iter().fold(MAGIC, fold);
    mix(frame[HEADER_BYTES..].iter().fold(head, fold))
}

/// Writes a frame of `len` bytes (at least [`MIN_FRAME`], at most
/// `buf.len()`) into `buf`; returns its length.
pub fn build(buf: &mut [u8], len: usize, dst: [u8; 6], src: [u8; 6], p: &Payload) -> usize {
    let len = len.clamp(MIN_FRAME, buf.len());
    let frame = &mut buf[..len];
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[14..22].copy_from_slice(&MAGIC.to_le_bytes());
    frame[22..30].copy_from_slice(&p.run_id.to_le_bytes());
    frame[30..38].copy_from_slice(&p.seq.to_le_bytes());
    frame[38] = match p.kind {
        Kind::Probe => 0,
        Kind::Peer => 2,
    };
    frame[39..47].copy_from_slice(&p.sent_tsc.to_le_bytes());
    for (i, b) in frame[HEADER_BYTES..].iter_mut().enumerate() {
        *b = p.seq.wrapping_add(i as u64) as u8;
    }
    let sum = checksum(frame);
    frame[47..55].copy_from_slice(&sum.to_le_bytes());
    len
}

fn u64_at(frame: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(frame[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads a received frame.
pub fn parse(frame: &[u8]) -> Result<Payload, FrameError> {
    if frame.len() < 14 || frame[12..14] != ETHERTYPE.to_be_bytes() {
        return Err(FrameError::Foreign);
    }
    if frame.len() < HEADER_BYTES {
        return Err(FrameError::Short);
    }
    if u64_at(frame, 14) != MAGIC {
        return Err(FrameError::Foreign);
    }
    if u64_at(frame, 47) != checksum(frame) {
        return Err(FrameError::BadChecksum);
    }
    let kind = match frame[38] {
        0 => Kind::Probe,
        2 => Kind::Peer,
        _ => return Err(FrameError::BadChecksum),
    };
    Ok(Payload {
        run_id: u64_at(frame, 22),
        seq: u64_at(frame, 30),
        kind,
        sent_tsc: u64_at(frame, 39),
    })
}

/// What a peer does with a probe: send it back to where it came from.
pub fn echo(frame: &mut [u8], peer_mac: [u8; 6]) {
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    frame[0..6].copy_from_slice(&src);
    frame[6..12].copy_from_slice(&peer_mac);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_survive_an_echo() {
        let mut buf = [0u8; 1514];
        let p = Payload {
            run_id: 9,
            seq: 1234,
            kind: Kind::Probe,
            sent_tsc: 77,
        };
        let n = build(&mut buf, 128, BROADCAST, [2, 0, 0, 0, 0, 1], &p);
        assert_eq!(n, 128);
        assert_eq!(parse(&buf[..n]), Ok(p));
        echo(&mut buf[..n], [2, 0, 0, 0, 0, 9]);
        assert_eq!(&buf[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(parse(&buf[..n]), Ok(p), "MACs are not checksummed");
        assert_eq!(build(&mut buf, 10, BROADCAST, BROADCAST, &p), MIN_FRAME);
    }

    #[test]
    fn damage_and_strangers_are_told_apart() {
        let mut buf = [0u8; 200];
        let n = build(
            &mut buf,
            200,
            BROADCAST,
            BROADCAST,
            &Payload {
                run_id: 1,
                seq: 2,
                kind: Kind::Peer,
                sent_tsc: 3,
            },
        );
        let mut bad = buf;
        bad[150] ^= 1;
        assert_eq!(parse(&bad[..n]), Err(FrameError::BadChecksum));
        assert_eq!(parse(&buf[..40]), Err(FrameError::Short));
        let mut ipv4 = buf;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse(&ipv4[..n]), Err(FrameError::Foreign));
        assert_eq!(parse(&[]), Err(FrameError::Foreign));
    }
}
