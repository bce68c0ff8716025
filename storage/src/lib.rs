//! Tern's partition logs: segment files written with direct I/O, sparse indexes, the batch
//! cache for tail reads, and crash recovery. Runs on a glommio shard; never blocks it.

pub mod cache;
pub mod compaction;
pub mod config;
pub mod fs;
pub mod index;
pub mod log;
pub mod producers;
pub mod records;
pub mod segment;
pub mod txn_index;
pub mod write_slots;

pub use config::LogConfig;
pub use log::{Appended, Durability, LogError, PartitionLog, Prepared};
pub use records::{Chunk, Records};

#[cfg(test)]
mod tests;
