//! The Kafka wire protocol as Tern speaks it: request framing, the advertised API table,
//! record-batch header validation, the group records of
//! `__consumer_offsets`. No I/O and no runtime: every function here is pure, so the
//! decoders can be fuzzed directly.

pub mod apis;
pub mod batch;
pub mod compression;
pub mod control;
pub mod fetch;
pub mod frame;
pub mod group_records;
pub mod legacy;
pub mod markers;
pub mod rpc;
pub mod txn_records;
pub mod wire;

pub use kafka_protocol;
