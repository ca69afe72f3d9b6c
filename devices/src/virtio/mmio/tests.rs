use super::*;
use crate::state::Persist;
use crate::test_utils::{bring_up, guest_memory, read_reg, write_reg, GuestQueue, Harness};
use crate::virtio::{ActivateError, COMMON_FEATURES};
use serde::{Deserialize, Serialize};

/// A device with two queues that records what the transport does to it.
struct Dummy {
    queues: Vec<Queue>,
    active: Option<ActivateContext>,
    notified: Vec<usize>,
    config: [u8; 8],
    resets: usize,
}

impl Dummy {
    fn new() -> Self {
        Dummy {
            queues: vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()],
            active: None,
            notified: Vec::new(),
            config: *b"tern-cfg",
            resets: 0,
        }
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        COMMON_FEATURES | 1
    }
    fn queues(&self) -> &[Queue] {
        &self.queues
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = self
            .config
            .get_mut(offset as usize..offset as usize + data.len())
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if !self.queues[0].ready() {
            return Err(ActivateError::QueueNotReady { index: 0 });
        }
        self.active = Some(ctx);
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
    fn reset(&mut self) {
        self.active = None;
        self.resets += 1;
    }
    fn queue_notify(&mut self, index: usize, _ops: &mut EventOps) {
        self.notified.push(index);
    }
    fn init_events(&mut self, _ops: &mut EventOps) {}
    fn process_event(&mut self, _events: Events, _ops: &mut EventOps) {}
    fn summary(&self) -> DeviceSummary {
        DeviceSummary::Serial
    }
}

#[derive(Debug, thiserror::Error)]
#[error("bad dummy state")]
struct DummyError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DummyState {
    config: [u8; 8],
}

impl Persist for Dummy {
    type State = DummyState;
    type ConstructorArgs = ();
    type Error = DummyError;
    fn save(&self) -> DummyState {
        DummyState {
            config: self.config,
        }
    }
    fn restore(_: (), state: &DummyState) -> Result<Self, DummyError> {
        if state.config[0] == 0 {
            return Err(DummyError);
        }
        let mut d = Dummy::new();
        d.config = state.config;
        Ok(d)
    }
}

fn transport() -> (GuestMemoryMmap, MmioTransport<Dummy>) {
    let mem = guest_memory();
    let t = MmioTransport::new(Dummy::new(), mem.clone()).unwrap();
    (mem, t)
}

const DRIVER: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

fn negotiate(t: &mut MmioTransport<Dummy>, features: u64) {
    write_reg(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(t, VIRTIO_MMIO_STATUS, DRIVER);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write_reg(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write_reg(t, VIRTIO_MMIO_STATUS, FEATURES_OK);
}

#[test]
fn identification_and_features() {
    let (_mem, mut t) = transport();
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    write_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1); // VERSION_1
    write_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        read_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        COMMON_FEATURES as u32 | 1
    );
    write_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);

    // Config space at 0x100, any width; past its end reads zero.
    let mut b = [0u8; 4];
    t.read(0x102, &mut b);
    assert_eq!(&b, b"rn-c");
    t.read(0x106, &mut b);
    assert_eq!(&b, b"fg\0\0");
    t.write(0x100, b"T");
    t.read(0x100, &mut b[..1]);
    assert_eq!(b[0], b'T');

    // Bad widths and alignment: ignored, reads give zero.
    let mut two = [0xffu8; 2];
    t.read(0, &mut two);
    assert_eq!(two, [0, 0]);
    t.read(1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    assert_eq!(t.status(), 0);
}

#[test]
fn feature_negotiation_refuses_what_was_not_offered() {
    let (_mem, mut t) = transport();
    negotiate(&mut t, COMMON_FEATURES | (1 << 40));
    assert_eq!(t.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // Legacy drivers (no VERSION_1) are refused too.
    write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, 1);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, COMMON_FEATURES);
    assert_eq!(t.status(), FEATURES_OK);
    // Features are frozen after FEATURES_OK.
    write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write_reg(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(t.save().acked_features, COMMON_FEATURES);
}

#[test]
fn status_must_progress_in_order() {
    let (_mem, mut t) = transport();
    write_reg(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(t.status(), 0);
    write_reg(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        &mut t,
        VIRTIO_MMIO_STATUS,
        0x100 | VIRTIO_CONFIG_S_ACKNOWLEDGE,
    );
    assert_eq!(t.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write_reg(
        &mut t,
        VIRTIO_MMIO_STATUS,
        DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(t.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    // Clearing a bit without a reset is refused.
    write_reg(&mut t, VIRTIO_MMIO_STATUS, DRIVER);
    write_reg(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(t.status(), DRIVER);
}

fn setup_queue(t: &mut MmioTransport<Dummy>, sel: u32, size: u32, desc: u64) {
    write_reg(t, VIRTIO_MMIO_QUEUE_SEL, sel);
    write_reg(t, VIRTIO_MMIO_QUEUE_NUM, size);
    write_reg(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
    write_reg(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    write_reg(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x8000);
    write_reg(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x9000);
    write_reg(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn bad_queue_setups_never_go_live() {
    let cases: [(u32, u64); 4] = [
        (12, 0x4000),              // not a power of two
        (32, 0x4000),              // above the maximum
        (16, 0x4008),              // misaligned descriptor table
        (16, 0x10_0000_0000_0000), // outside guest memory
    ];
    for (size, desc) in cases {
        let (_mem, mut t) = transport();
        negotiate(&mut t, COMMON_FEATURES);
        setup_queue(&mut t, 0, size, desc);
        write_reg(
            &mut t,
            VIRTIO_MMIO_STATUS,
            FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(!t.is_activated(), "size {size} desc {desc:#x}");
        assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(t.irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
        // Notifications to a dead device go nowhere.
        write_reg(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.queue_evts()[0].read().is_err());
        // A reset recovers it.
        write_reg(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.status(), 0);
        negotiate(&mut t, COMMON_FEATURES);
        setup_queue(&mut t, 0, 16, 0x4000);
        write_reg(
            &mut t,
            VIRTIO_MMIO_STATUS,
            FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(t.is_activated());
    }
    // A queue the device needs, not ready: the device refuses.
    let (_mem, mut t) = transport();
    negotiate(&mut t, COMMON_FEATURES);
    write_reg(
        &mut t,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(!t.is_activated());
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn queue_registers_are_locked_outside_setup() {
    let (_mem, mut t) = transport();
    // Before FEATURES_OK.
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
    assert_eq!(t.device().queues()[0].size(), 16);
    negotiate(&mut t, COMMON_FEATURES);
    setup_queue(&mut t, 0, 8, 0x4000);
    // While ready, only QueueReady may change.
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(t.device().queues()[0].size(), 8);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read_reg(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    write_reg(
        &mut t,
        VIRTIO_MMIO_STATUS,
        FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(t.is_activated());
    // After DRIVER_OK.
    write_reg(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert!(t.device().queues()[0].ready());
}

#[test]
fn notifications_and_interrupts() {
    let (mem, t) = transport();
    let q0 = GuestQueue::new(&mem, 0x10000, 16);
    let q1 = GuestQueue::new(&mem, 0x20000, 16);
    let mut h = Harness::new(t);
    bring_up(&mut h.t.lock().unwrap(), &[&q0, &q1], COMMON_FEATURES);
    {
        let t = h.t.lock().unwrap();
        assert!(t.is_activated());
        assert!(t.device().queues()[0].event_idx_enabled());
    }
    // Activation kicks every queue once.
    h.run_until(|h| h.t.lock().unwrap().device().notified.len() >= 2);
    h.t.lock().unwrap().device_mut().notified.clear();

    // The MMIO fallback for QueueNotify goes through the queue's EventFd.
    write_reg(&mut *h.t.lock().unwrap(), VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    write_reg(&mut *h.t.lock().unwrap(), VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    h.run_until(|h| !h.t.lock().unwrap().device().notified.is_empty());
    assert_eq!(h.t.lock().unwrap().device().notified, vec![1]);

    let mut t = h.t.lock().unwrap();
    let irq = t.device().active.as_ref().unwrap().irq.clone();
    assert!(
        t.irq_evt().read().is_err(),
        "no interrupt before the device raises one"
    );
    irq.signal_used();
    assert_eq!(t.irq_evt().read().unwrap(), 1);
    assert_eq!(read_reg(&mut *t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    write_reg(&mut *t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(read_reg(&mut *t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // Reset returns everything to the initial state.
    write_reg(&mut *t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(t.device().resets, 2, "bring-up resets once, then us");
    assert!(!t.device().queues()[0].ready());
}

fn round_trip(t: &MmioTransport<Dummy>, mem: &GuestMemoryMmap) -> MmioTransport<Dummy> {
    let json = serde_json::to_string(&t.save()).unwrap();
    let state: MmioTransportState<DummyState> = serde_json::from_str(&json).unwrap();
    let args = MmioTransportArgs {
        mem: mem.clone(),
        device: (),
    };
    MmioTransport::<Dummy>::restore(args, &state).unwrap()
}

#[test]
fn persist_round_trip_keeps_the_device_live() {
    let (mem, mut t) = transport();
    let q0 = GuestQueue::new(&mem, 0x10000, 8);
    bring_up(&mut t, &[&q0], COMMON_FEATURES);
    t.device_mut().queues_mut()[0].set_next_avail(5);
    t.device_mut().queues_mut()[0].set_next_used(3);
    t.irq.trigger(VIRTIO_MMIO_INT_VRING).unwrap();
    let r = round_trip(&t, &mem);
    assert_eq!(r.save(), t.save());
    assert!(r.is_activated());
    assert_eq!(r.device().queues()[0].next_avail(), 5);
    assert_eq!(
        r.irq_evt().read().unwrap(),
        1,
        "pending interrupt re-injected"
    );

    // A device that was never set up restores as such.
    let (mem, t) = transport();
    let r = round_trip(&t, &mem);
    assert!(!r.is_activated());
    assert_eq!(r.save(), t.save());
}

#[test]
fn restore_rejects_untrusted_states() {
    let (mem, mut t) = transport();
    let q0 = GuestQueue::new(&mem, 0x10000, 8);
    bring_up(&mut t, &[&q0], COMMON_FEATURES);
    let good = t.save();
    let restore = |s: &MmioTransportState<DummyState>| {
        let args = MmioTransportArgs {
            mem: mem.clone(),
            device: (),
        };
        MmioTransport::<Dummy>::restore(args, s)
    };
    let mut bad = good.clone();
    bad.status = VIRTIO_CONFIG_S_DRIVER_OK;
    assert!(matches!(restore(&bad), Err(MmioRestoreError::Status(_))));
    let mut bad = good.clone();
    bad.acked_features |= 1 << 50;
    assert!(matches!(
        restore(&bad),
        Err(MmioRestoreError::Features { .. })
    ));
    let mut bad = good.clone();
    bad.interrupt_status = 0x10;
    assert!(matches!(
        restore(&bad),
        Err(MmioRestoreError::InterruptStatus(0x10))
    ));
    let mut bad = good.clone();
    bad.queues.pop();
    assert!(matches!(
        restore(&bad),
        Err(MmioRestoreError::QueueCount { .. })
    ));
    let mut bad = good.clone();
    bad.queues[0].size = 7;
    assert!(matches!(
        restore(&bad),
        Err(MmioRestoreError::Queue { index: 0, .. })
    ));
    let mut bad = good.clone();
    bad.queues[1].max_size = 256;
    assert!(matches!(
        restore(&bad),
        Err(MmioRestoreError::Queue { index: 1, .. })
    ));
    let mut bad = good.clone();
    bad.queues[0].used_ring = 0xffff_ffff_0000;
    assert!(matches!(restore(&bad), Err(MmioRestoreError::Activate(_))));
    let mut bad = good.clone();
    bad.device.config[0] = 0;
    assert!(matches!(restore(&bad), Err(MmioRestoreError::Device(_))));
    assert!(restore(&good).is_ok());
}
