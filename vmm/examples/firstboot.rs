use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use vmm::vstate::vcpu::*;
struct Early;
impl IoHandler for Early {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0);
        if port == 0x3fd { data[0] = 0x60; }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if port == 0x3f8 { let _ = std::io::stdout().write_all(&data[..1]); let _ = std::io::stdout().flush(); }
        if port == 0x64 && data[0] == 0xfe { println!("\n[reset]"); std::process::exit(0); }
    }
    fn mmio_read(&self, _a: u64, data: &mut [u8]) { data.fill(0xff); }
    fn mmio_write(&self, _a: u64, _d: &[u8]) {}
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let host = vmm::vstate::kvm::KvmHost::open().unwrap();
    let cpus: u8 = args[3].parse().unwrap();
    let parts = vmm::builder::create(&host, 512 << 20, cpus, Default::default()).unwrap();
    let cmdline = vmm::config::kernel_cmdline(Some(&args[2]), vmm::config::PvmWorkarounds::Auto, host.is_pvm);
    let spec = vmm::arch::boot::BootSpec { kernel: Path::new(&args[1]), initrd: None, cmdline: &cmdline, cpus, mem_bytes: 512 << 20 };
    let e = vmm::builder::load_and_configure(&parts, &spec).unwrap();
    eprintln!("entry {:x?} tracking {:?} msrs {} xsave {}", e, parts.vm.tracking, parts.msr_indices.len(), parts.xsave_bytes);
    let exit = Arc::new(vmm::exit::ExitNotifier::new().unwrap());
    let ctx = Arc::new(VcpuContext { vm: parts.vm.clone(), io: Arc::new(Early), exit: exit.clone(), dirty: parts.dirty.clone(), controls: parts.controls.clone(), msr_indices: parts.msr_indices.clone(), xsave_bytes: parts.xsave_bytes });
    let _v = Vcpus::spawn(parts.vcpu_fds, ctx, Target::Run).unwrap();
    loop { std::thread::sleep(std::time::Duration::from_millis(100)); if let Some(r) = exit.reason() { println!("\nEXIT: {r}"); break; } }
}
