//! Usage accounting for directory volumes.
//!
//! A volume's usage is one counter of allocated bytes kept in a small file
//! that every process touching the volume maps shared: the filesystem servers
//! of all sandboxes mounting it and the host-side file API. Writers reserve
//! bytes with a compare-and-swap before writing, so concurrent writers in
//! different processes can never together pass the limit, and they settle the
//! reservation against the real allocation afterwards. Reading usage is a
//! single load, so listing volumes never walks a tree.
//!
//! What counts is every byte the volume holds: its files' allocation, a
//! fixed cost per name and client xattrs (see [`usage`]). The counter is
//! kept exact by everything that writes through msb; a [`scan`] recounts a
//! tree from scratch (at creation, on `msb volume doctor`, and whenever the
//! counter file is missing or damaged).

mod budget;
mod scan;
pub mod usage;

pub use budget::{Budget, QuotaError};
pub use scan::{ScanError, scan};
pub use usage::ENTRY_COST;
