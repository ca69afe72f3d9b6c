//! The test guest's memory plan: from the RAM the memory map lists, minus
//! what is taken (low memory, the guest image, boot modules), place the heap
//! right after the image and the working set in what is left, lowest
//! addresses first, in at most [`MAX_EXTENTS`] pieces.

use crate::memory::MAX_EXTENTS;

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub const fn new(start: u64, end: u64) -> Self {
        Span { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const PAGE: u64 = 4096;
/// Memory below this is left alone (real-mode area, firmware, boot data).
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// Most free ranges tracked while planning.
const MAX_FREE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub heap: Span,
    pub working_set: [Span; MAX_EXTENTS],
    pub extents: usize,
}

impl MemoryPlan {
    pub fn working_set(&self) -> &[Span] {
        &self.working_set[..self.extents]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The heap does not fit in free RAM right after the image.
    NoRoomForHeap { start: u64, bytes: u64 },
    /// The working set is larger than the free RAM.
    WorkingSetTooLarge { wanted: u64, free: u64 },
    /// The free RAM is in too many pieces.
    TooFragmented,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            LayoutError::NoRoomForHeap { start, bytes } => write!(
                f,
                "no free RAM for a {} KiB heap at {start:#x}",
                bytes >> 10
            ),
            LayoutError::WorkingSetTooLarge { wanted, free } => {
                write!(
                    f,
                    "working set of {} MiB does not fit in {} MiB of free RAM",
                    wanted >> 20,
                    free >> 20
                )
            }
            LayoutError::TooFragmented => {
                write!(f, "free RAM is split into more than {MAX_FREE} ranges")
            }
        }
    }
}

struct Free {
    spans: [Span; MAX_FREE],
    n: usize,
}

impl Free {
    fn push(&mut self, s: Span) -> Result<(), LayoutError> {
        if s.is_empty() {
            return Ok(());
        }
        if self.n == MAX_FREE {
            return Err(LayoutError::TooFragmented);
        }
        self.spans[self.n] = s;
        self.n += 1;
        Ok(())
    }

    /// Removes `cut` from every free span.
    fn remove(&mut self, cut: Span) -> Result<(), LayoutError> {
        let old = Free {
            spans: self.spans,
            n: self.n,
        };
        self.n = 0;
        for s in &old.spans[..old.n] {
            if cut.end <= s.start || cut.start >= s.end {
                self.push(*s)?;
            } else {
                self.push(Span::new(s.start, cut.start.max(s.start)))?;
                self.push(Span::new(cut.end.min(s.end), s.end))?;
            }
        }
        Ok(())
    }
}

/// Total RAM in the map (every RAM range, low memory included).
pub fn ram_bytes(ram: &[Span]) -> u64 {
    ram.iter().map(Span::len).sum()
}

/// Plans the heap (`heap_bytes` at `heap_start`) and a working set of
/// `ws_bytes` in the RAM ranges `ram` minus the `taken` ones.
pub fn plan(
    ram: &[Span],
    taken: &[Span],
    heap_start: u64,
    heap_bytes: u64,
    ws_bytes: u64,
) -> Result<MemoryPlan, LayoutError> {
    let mut free = Free {
        spans: [Span::default(); MAX_FREE],
        n: 0,
    };
    for r in ram {
        let start = r.start.max(LOW_MEMORY_END).next_multiple_of(PAGE);
        free.push(Span::new(start, r.end & !(PAGE - 1)))?;
    }
    for &t in taken {
        free.remove(t)?;
    }
    let heap = Span::new(
        heap_start,
        heap_start.saturating_add(heap_bytes.next_multiple_of(PAGE)),
    );
    if !free.spans[..free.n]
        .iter()
        .any(|s| s.start <= heap.start && heap.end <= s.end)
    {
        return Err(LayoutError::NoRoomForHeap {
            start: heap_start,
            bytes: heap_bytes,
        });
    }
    free.remove(heap)?;
    free.spans[..free.n].sort_unstable_by_key(|s| s.start);

    let total_free: u64 = free.spans[..free.n].iter().map(Span::len).sum();
    let wanted = ws_bytes.next_multiple_of(PAGE);
    if wanted > total_free {
        return Err(LayoutError::WorkingSetTooLarge {
            wanted,
            free: total_free,
        });
    }
    let mut plan = MemoryPlan {
        heap,
        working_set: [Span::default(); MAX_EXTENTS],
        extents: 0,
    };
    let mut left = wanted;
    for s in &free.spans[..free.n] {
        if left == 0 {
            break;
        }
        if plan.extents == MAX_EXTENTS {
            return Err(LayoutError::TooFragmented);
        }
        let take = left.min(s.len());
        plan.working_set[plan.extents] = Span::new(s.start, s.start + take);
        plan.extents += 1;
        left -= take;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const IMAGE: Span = Span::new(MIB, MIB + 0x50000);

    #[test]
    fn small_guest() {
        let ram = [Span::new(0, 0x9fc00), Span::new(MIB, 512 * MIB)];
        let p = plan(&ram, &[IMAGE], IMAGE.end, 300 * 1024, 64 * MIB).unwrap();
        assert_eq!(p.heap, Span::new(IMAGE.end, IMAGE.end + 300 * 1024));
        assert_eq!(
            p.working_set(),
            &[Span::new(p.heap.end, p.heap.end + 64 * MIB)]
        );
        assert_eq!(ram_bytes(&ram), 512 * MIB - MIB + 0x9fc00);
    }

    #[test]
    fn working_set_spans_the_mmio_hole() {
        let ram = [
            Span::new(0, 0x9fc00),
            Span::new(MIB, 3 * GIB),
            Span::new(4 * GIB, 5 * GIB),
        ];
        let taken = [IMAGE, Span::new(16 * MIB, 20 * MIB)]; // an initrd
        let p = plan(&ram, &taken, IMAGE.end, MIB, 3 * GIB).unwrap();
        let ws = p.working_set();
        assert_eq!(ws.len(), 3);
        assert_eq!(ws[0], Span::new(p.heap.end, 16 * MIB));
        assert_eq!(ws[1], Span::new(20 * MIB, 3 * GIB));
        assert_eq!(ws[2].start, 4 * GIB);
        assert_eq!(ws.iter().map(Span::len).sum::<u64>(), 3 * GIB);
    }

    #[test]
    fn too_large_or_no_heap() {
        let ram = [Span::new(0, 128 * MIB)];
        let e = plan(&ram, &[IMAGE], IMAGE.end, MIB, 200 * MIB).unwrap_err();
        assert!(matches!(e, LayoutError::WorkingSetTooLarge { wanted, .. } if wanted == 200 * MIB));
        assert!(matches!(
            plan(&ram, &[IMAGE], IMAGE.end, 200 * MIB, 0),
            Err(LayoutError::NoRoomForHeap { .. })
        ));
        assert!(matches!(
            plan(&[], &[], IMAGE.end, MIB, 0),
            Err(LayoutError::NoRoomForHeap { .. })
        ));
    }

    #[test]
    fn unaligned_ram_is_trimmed_to_pages() {
        let ram = [Span::new(MIB + 1, 8 * MIB + 5)];
        let p = plan(&ram, &[], MIB + 4096, 4096, 7 * MIB - 2 * 4096).unwrap();
        assert_eq!(p.working_set()[0], Span::new(MIB + 2 * 4096, 8 * MIB));
    }

    #[test]
    fn fragmentation_is_an_error_not_a_panic() {
        let ram: Vec<Span> = (0..40)
            .map(|i| Span::new(MIB + i * 2 * 4096, MIB + i * 2 * 4096 + 4096))
            .collect();
        assert_eq!(
            plan(&ram, &[], MIB, 4096, 4096),
            Err(LayoutError::TooFragmented)
        );
    }
}
