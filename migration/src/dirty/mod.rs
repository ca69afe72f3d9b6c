//! Dirty-page accounting on the migration source: which pages still have to be
//! sent, with the count kept incrementally (never by walking the bitmap again).

mod bitpos;
mod set;

pub use bitpos::BitPositions;
pub use set::{DirtySet, RegionLayout};
