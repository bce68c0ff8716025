//! The authorized operations that Metadata, DescribeGroups, ConsumerGroupDescribe and
//! DescribeCluster report when a client asks for them (KIP-430): a bit per ACL operation code.
//! With no authorizer configured, Kafka reports every operation the resource type supports, and
//! so does Tern until it has ACLs.

/// ACL operation codes (Kafka's `AclOperation`).
const READ: u8 = 3;
const WRITE: u8 = 4;
const CREATE: u8 = 5;
const DELETE: u8 = 6;
const ALTER: u8 = 7;
const DESCRIBE: u8 = 8;
const CLUSTER_ACTION: u8 = 9;
const DESCRIBE_CONFIGS: u8 = 10;
const ALTER_CONFIGS: u8 = 11;
const IDEMPOTENT_WRITE: u8 = 12;

const fn bits(ops: &[u8]) -> i32 {
    let mut out = 0;
    let mut i = 0;
    while i < ops.len() {
        out |= 1 << ops[i];
        i += 1;
    }
    out
}

/// What a topic supports (Kafka's `AclEntry.supportedOperations(TOPIC)`).
pub const TOPIC: i32 = bits(&[
    READ,
    WRITE,
    CREATE,
    DELETE,
    ALTER,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
]);

/// What a group supports.
pub const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);

/// What the cluster supports.
pub const CLUSTER: i32 = bits(&[
    CREATE,
    CLUSTER_ACTION,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
    IDEMPOTENT_WRITE,
    ALTER,
    DESCRIBE,
]);

/// The value of a field the client did not ask for.
pub const NOT_REQUESTED: i32 = i32::MIN;

/// `ops` if the client asked for them.
pub fn if_requested(requested: bool, ops: i32) -> i32 {
    if requested {
        ops
    } else {
        NOT_REQUESTED
    }
}
