//! The admin CLI: `tern group ...` (and later topic, cluster, acl), talking to a broker over
//! the Kafka protocol.

pub mod client;
pub mod group;
