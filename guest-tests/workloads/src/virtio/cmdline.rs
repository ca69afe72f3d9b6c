//! `virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>]` command line tokens
//! (Linux's syntax, which tern and QEMU microvm with `acpi=off` write).
//! Sizes take Linux's K/M/G suffixes; numbers may be decimal or 0x-hex.

const PREFIX: &str = "virtio_mmio.device=";

/// One declared device window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    number(digits)?.checked_mul(1 << shift)
}

/// Parses the value of one token (after `virtio_mmio.device=`).
pub fn parse_device(value: &str) -> Option<MmioDevice> {
    let (size_text, rest) = value.split_once('@')?;
    let (base_text, rest) = rest.split_once(':')?;
    let irq_text = rest.split(':').next()?;
    let device = MmioDevice {
        base: number(base_text)?,
        size: size(size_text)?,
        irq: number(irq_text)?.try_into().ok()?,
    };
    (device.size >= 0x100).then_some(device)
}

/// Every `virtio_mmio.device=` token of `cmdline`: the devices, and the
/// first malformed value, if any.
pub fn devices(cmdline: &str) -> impl Iterator<Item = Result<MmioDevice, &str>> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|t| t.strip_prefix(PREFIX))
        .map(|v| parse_device(v).ok_or(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_and_tern_forms() {
        let line = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0000000:5 \
                    virtio_mmio.device=0x1000@0xd0001000:6:3 virtio_mmio.device=oops";
        let found: Vec<_> = devices(line).collect();
        assert_eq!(
            found,
            [
                Ok(MmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                }),
                Ok(MmioDevice {
                    base: 0xd000_0000,
                    size: 4096,
                    irq: 5
                }),
                Ok(MmioDevice {
                    base: 0xd000_1000,
                    size: 4096,
                    irq: 6
                }),
                Err("oops"),
            ]
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "512@0xfeb00e00",
            "@0x1000:5",
            "512@zz:5",
            "16@0x1000:5",
            "1G@0x1000:99999999999",
            "512@0x1000:",
        ] {
            assert_eq!(parse_device(bad), None, "{bad}");
        }
        assert_eq!(parse_device("1M@4096:1").map(|d| d.size), Some(1 << 20));
    }
}
