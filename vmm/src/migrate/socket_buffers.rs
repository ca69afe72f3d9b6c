//! Socket buffers for the migration stream. The source writes a whole page
//! run per call from one thread and the destination reads it on another
//! core; with the kernel's autotuned buffers each side keeps waiting for the
//! other (measured: 2.1–2.3 GiB/s against 2.8–2.9 with these, in
//! `docs/results.md`). A size set with `SO_SNDBUF`/`SO_RCVBUF` turns the
//! kernel's autotuning off and is capped at `net.core.wmem_max` /
//! `rmem_max`, which many hosts leave at ~208 KiB, below what autotuning
//! reaches; so the buffers are set only where the host allows the full size,
//! and left to the kernel otherwise.

use std::os::fd::{AsFd, AsRawFd};

/// What each direction's buffer is set to (the kernel doubles it for its
/// bookkeeping).
pub const STREAM_BUFFER: usize = 4 << 20;

/// Sets both buffers of `socket` to [`STREAM_BUFFER`] where the host's caps
/// allow it; says in the log which it did.
pub fn widen(socket: &impl AsFd) {
    for (option, cap, name) in [
        (libc::SO_SNDBUF, "/proc/sys/net/core/wmem_max", "send"),
        (libc::SO_RCVBUF, "/proc/sys/net/core/rmem_max", "receive"),
    ] {
        match read_cap(cap) {
            Some(max) if max >= STREAM_BUFFER => {
                if let Err(e) = set_size_option(socket, option, STREAM_BUFFER) {
                    log::info!("migration socket: {name} buffer not set: {e}");
                }
            }
            max => log::info!(
                "migration socket: {name} buffer left to the kernel ({cap} is {}, below {STREAM_BUFFER})",
                max.map_or("unreadable".into(), |m| m.to_string())
            ),
        }
    }
}

fn read_cap(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sets the `SOL_SOCKET` option `option`, a byte count, on `socket`.
pub fn set_size_option(
    socket: &impl AsFd,
    option: libc::c_int,
    bytes: usize,
) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(std::io::Error::other)?;
    // SAFETY: a plain setsockopt on a socket we own, with a pointer to a live
    // c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(socket: &impl AsFd, option: libc::c_int) -> usize {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a live c_int whose size is passed.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value as usize
    }

    #[test]
    fn buffers_are_widened_where_the_host_allows_and_left_alone_otherwise() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let before = get(&s, libc::SO_SNDBUF);
        widen(&s);
        for (option, cap) in [
            (libc::SO_SNDBUF, "/proc/sys/net/core/wmem_max"),
            (libc::SO_RCVBUF, "/proc/sys/net/core/rmem_max"),
        ] {
            let now = get(&s, option);
            if read_cap(cap).is_some_and(|m| m >= STREAM_BUFFER) {
                assert_eq!(now, 2 * STREAM_BUFFER, "{cap}");
            } else if option == libc::SO_SNDBUF {
                assert_eq!(now, before, "{cap} too small: left alone");
            }
        }
    }
}
