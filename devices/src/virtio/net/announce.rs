//! Telling the network where the guest is after it moved.
//!
//! A migrated guest is reachable through a new tap, but the switches and
//! bridges on the way still send its traffic to the old port until they see a
//! frame from it on the new one, and a guest that only answers (pings, a
//! server) may never send first: its peers then time out. So the destination
//! sends a few frames from the guest's MAC as soon as the guest runs, as QEMU
//! does: a broadcast RARP request ("who am I"), which every switch learns from
//! and every host ignores.

/// EtherType of RARP.
const ETHERTYPE_RARP: u16 = 0x8035;
/// Shortest Ethernet frame without its FCS.
const MIN_FRAME: usize = 60;

/// A broadcast RARP request from `mac` (RFC 903, reverse request), padded to
/// the shortest Ethernet frame.
pub fn rarp_announcement(mac: [u8; 6]) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_request_from_the_guest_mac() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp_announcement(mac);
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac, "source: the guest");
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac);
        assert!(f[38..].iter().all(|&b| b == 0));
    }
}
