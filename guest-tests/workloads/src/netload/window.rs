//! Which sequence numbers came back: duplicates and reordering over a
//! sliding window of the last 65536.

const WORDS: usize = 1024;
const SPAN: u64 = (WORDS * 64) as u64;

pub struct SeqWindow {
    bits: [u64; WORDS],
    highest: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time; `late` if a higher number was seen before it.
    New {
        late: bool,
    },
    Duplicate,
    /// Further behind the highest than the window remembers.
    TooOld,
}

impl SeqWindow {
    pub const fn new() -> Self {
        SeqWindow {
            bits: [0; WORDS],
            highest: None,
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        (((seq / 64) % WORDS as u64) as usize, 1 << (seq % 64))
    }

    pub fn see(&mut self, seq: u64) -> Seen {
        let highest = match self.highest {
            None => {
                self.highest = Some(seq);
                let (w, b) = Self::bit(seq);
                self.bits[w] |= b;
                return Seen::New { late: false };
            }
            Some(h) => h,
        };
        if seq > highest {
            // Forget what slides out of the window.
            if seq - highest >= SPAN {
                self.bits = [0; WORDS];
            } else {
                for s in highest + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            self.highest = Some(seq);
            return Seen::New { late: false };
        }
        if highest - seq >= SPAN {
            return Seen::TooOld;
        }
        let (w, b) = Self::bit(seq);
        if self.bits[w] & b != 0 {
            return Seen::Duplicate;
        }
        self.bits[w] |= b;
        Seen::New { late: true }
    }
}

impl Default for SeqWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_late_arrivals_and_the_window_edge() {
        let mut w = SeqWindow::new();
        assert_eq!(w.see(5), Seen::New { late: false });
        assert_eq!(w.see(7), Seen::New { late: false });
        assert_eq!(w.see(6), Seen::New { late: true });
        assert_eq!(w.see(6), Seen::Duplicate);
        assert_eq!(w.see(7), Seen::Duplicate);
        assert_eq!(w.see(0), Seen::New { late: true });
        assert_eq!(w.see(7 + SPAN), Seen::New { late: false });
        assert_eq!(w.see(7), Seen::TooOld);
        assert_eq!(
            w.see(8),
            Seen::New { late: true },
            "inside the window again, not seen"
        );
        // 8's slot now stands for 8 + SPAN.
        assert_eq!(w.see(8 + SPAN), Seen::New { late: false });
        assert_eq!(w.see(8), Seen::TooOld);
        assert_eq!(w.see(7 + SPAN), Seen::Duplicate);
        // Slots between the old and the new highest are forgotten.
        assert_eq!(w.see(20 + SPAN), Seen::New { late: false });
        assert_eq!(w.see(9 + SPAN), Seen::New { late: true });
        assert_eq!(w.see(3 * SPAN), Seen::New { late: false });
        assert_eq!(w.see(3 * SPAN - 1), Seen::New { late: true });
    }
}
