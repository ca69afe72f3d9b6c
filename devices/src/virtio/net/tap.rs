//! A tap interface opened through `/dev/net/tun` (the only unsafe code in this crate: two
//! ioctls), and the frame-level backend trait the net device runs on.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::{NetError, VNET_HDR_LEN};

const TUNTAP: u32 = 0x54;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);

/// Interface names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, in a 40-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Where the net device sends and receives frames. Each frame starts with a 12-byte
/// `virtio_net_hdr_v1`. The fd must be non-blocking; the device watches it edge-triggered.
pub trait NetBackend: AsRawFd + Send {
    /// Receives one frame; `WouldBlock` when none is waiting.
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// An open tap interface (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, header size 12, non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap named `name`, creating it if it does not exist.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let bad_name = || NetError::TapName(name.to_string());
        if name.is_empty() || name.len() >= IFNAMSIZ || name.as_bytes().contains(&0) {
            return Err(bad_name());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads a `struct ifreq`, which
        // `IfReq` lays out (name, flags, padding to 40 bytes) and which lives across the call.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) };
        if ret < 0 {
            return Err(NetError::Ioctl("TUNSETIFF", io::Error::last_os_error()));
        }
        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: `file` is a tap attached above; TUNSETVNETHDRSZ reads one int, which lives
        // across the call.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(NetError::Ioctl(
                "TUNSETVNETHDRSZ",
                io::Error::last_os_error(),
            ));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle to the same tap queue (a `dup` of the descriptor): how a
    /// device rebuilt from a saved state takes over the tap of the one it
    /// replaces, since a single-queue tap cannot be attached twice.
    pub fn try_clone(&self) -> Result<Self, NetError> {
        Ok(Tap {
            file: self.file.try_clone().map_err(NetError::OpenTun)?,
            name: self.name.clone(),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}
