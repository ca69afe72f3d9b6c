//! placeholder for the net workload
use tern_workloads::bootdata::layout::Span;
use tern_workloads::event::ErrorKind;
use tern_workloads::params::Config;

use crate::heap::Heap;
use crate::platform::GuestPlatform;

pub fn run(
    platform: &'static GuestPlatform,
    _config: Config,
    _heap: &mut Heap,
    _cmdline: &str,
    _ram: &[Span],
) -> ! {
    crate::fail(platform, ErrorKind::Net, format_args!("not yet"))
}
