//! The Kafka wire protocol as Tern speaks it: request framing, the advertised API table,
//! record-batch header validation. No I/O and no runtime: every function here is pure, so the
//! decoders can be fuzzed directly.

pub mod apis;
pub mod batch;
pub mod control;
pub mod fetch;
pub mod frame;
pub mod legacy;
pub mod rpc;
pub mod wire;

pub use kafka_protocol;
