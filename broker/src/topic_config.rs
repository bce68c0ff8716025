//! Topic configs: Kafka's names, defaults, types and validation, and how they map onto the
//! storage settings of a partition log.

use std::collections::BTreeMap;
use std::time::Duration;
use tern_storage::LogConfig;

/// Kafka's config value types, as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    /// Allowed values for enumerated strings; empty means any.
    pub allowed: &'static [&'static str],
    pub doc: &'static str,
}

/// A config Tern accepts and stores with Kafka's type and default, and that has no effect here
/// yet (replication, tiered storage and compaction tuning come later; see the README).
const fn stored(name: &'static str, default: &'static str, kind: ConfigType) -> ConfigDef {
    ConfigDef {
        name,
        default,
        kind,
        allowed: &[],
        doc: "Accepted and stored as Kafka does; not yet enforced by Tern.",
    }
}

/// Every topic config Kafka 4.x defines, so tools that set any of them work.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "max.compaction.lag.ms",
        default: "9223372036854775807",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "A record is compacted at most this long after it was written, whatever the dirty ratio.",
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: ConfigType::Double,
        allowed: &[],
        doc: "Compact when at least this share of the compactable log has not been compacted yet.",
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        default: "0",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Records newer than this are not compacted yet.",
    },
    stored("compression.gzip.level", "-1", ConfigType::Int),
    stored("compression.lz4.level", "9", ConfigType::Int),
    stored("compression.zstd.level", "3", ConfigType::Int),
    stored("file.delete.delay.ms", "60000", ConfigType::Long),
    stored(
        "follower.replication.throttled.replicas",
        "",
        ConfigType::List,
    ),
    stored(
        "leader.replication.throttled.replicas",
        "",
        ConfigType::List,
    ),
    stored("local.retention.bytes", "-2", ConfigType::Long),
    stored("local.retention.ms", "-2", ConfigType::Long),
    stored(
        "message.timestamp.after.max.ms",
        "3600000",
        ConfigType::Long,
    ),
    stored(
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        ConfigType::Long,
    ),
    stored("preallocate", "false", ConfigType::Boolean),
    stored("remote.log.copy.disable", "false", ConfigType::Boolean),
    stored("remote.log.delete.on.disable", "false", ConfigType::Boolean),
    stored("remote.storage.enable", "false", ConfigType::Boolean),
    stored("segment.index.bytes", "10485760", ConfigType::Int),
    stored("segment.jitter.ms", "0", ConfigType::Long),
    stored(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
    ),
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        kind: ConfigType::List,
        allowed: &["delete", "compact", "compact,delete", "delete,compact"],
        doc: "What to do with old segments: delete or compact.",
    },
    ConfigDef {
        name: "compression.type",
        default: "producer",
        kind: ConfigType::String,
        allowed: &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"],
        doc: "Batches are stored as the producer compressed them.",
    },
    ConfigDef {
        name: "delete.retention.ms",
        default: "86400000",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "How long tombstones are kept on compacted topics.",
    },
    ConfigDef {
        name: "flush.messages",
        default: "9223372036854775807",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Messages between forced fsyncs.",
    },
    ConfigDef {
        name: "flush.ms",
        default: "9223372036854775807",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Milliseconds between forced fsyncs.",
    },
    ConfigDef {
        name: "index.interval.bytes",
        default: "4096",
        kind: ConfigType::Int,
        allowed: &[],
        doc: "Bytes between offset index entries.",
    },
    ConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        kind: ConfigType::Int,
        allowed: &[],
        doc: "Largest record batch accepted.",
    },
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String,
        allowed: &["CreateTime", "LogAppendTime"],
        doc: "Keep the producer's timestamps or stamp the broker's time.",
    },
    ConfigDef {
        name: "min.insync.replicas",
        default: "1",
        kind: ConfigType::Int,
        allowed: &[],
        doc: "Replicas that must have a batch before acks=all is answered.",
    },
    ConfigDef {
        name: "retention.bytes",
        default: "-1",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Partition size above which old segments are deleted (-1: no limit).",
    },
    ConfigDef {
        name: "retention.ms",
        default: "604800000",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Age after which old segments are deleted (-1: no limit).",
    },
    ConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        kind: ConfigType::Int,
        allowed: &[],
        doc: "Segment size at which the log rolls.",
    },
    ConfigDef {
        name: "segment.ms",
        default: "604800000",
        kind: ConfigType::Long,
        allowed: &[],
        doc: "Segment age at which the log rolls.",
    },
];

pub fn def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Dynamic broker configs that set a topic config's default (Kafka's synonyms): (broker
/// config, topic config). Set cluster-wide or per node, they apply to every topic that does
/// not set its own, without a restart.
pub const BROKER_TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("compression.type", "compression.type"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    ("log.cleaner.max.compaction.lag.ms", "max.compaction.lag.ms"),
    (
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
    ),
    ("log.cleaner.min.compaction.lag.ms", "min.compaction.lag.ms"),
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.flush.interval.messages", "flush.messages"),
    ("log.flush.interval.ms", "flush.ms"),
    ("log.index.interval.bytes", "index.interval.bytes"),
    (
        "log.message.timestamp.after.max.ms",
        "message.timestamp.after.max.ms",
    ),
    (
        "log.message.timestamp.before.max.ms",
        "message.timestamp.before.max.ms",
    ),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("log.preallocate", "preallocate"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.retention.ms", "retention.ms"),
    ("log.roll.ms", "segment.ms"),
    ("log.segment.bytes", "segment.bytes"),
    ("log.segment.delete.delay.ms", "file.delete.delay.ms"),
    ("message.max.bytes", "max.message.bytes"),
    ("min.insync.replicas", "min.insync.replicas"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// Kafka's other dynamic broker configs: they tune Kafka's own machinery (thread pools,
/// connection limits, the log cleaner, replication throttles, SASL's Kerberos login), so they
/// are accepted and stored, with Kafka's types and defaults, for the tools that set them; they
/// have no effect here (SASL and TLS come with the security work).
pub const BROKER_ONLY_CONFIGS: &[ConfigDef] = &[
    stored("background.threads", "10", ConfigType::Int),
    stored(
        "follower.replication.throttled.rate",
        "9223372036854775807",
        ConfigType::Long,
    ),
    stored(
        "leader.replication.throttled.rate",
        "9223372036854775807",
        ConfigType::Long,
    ),
    stored(
        "max.connection.creation.rate",
        "2147483647",
        ConfigType::Int,
    ),
    stored("max.connections", "2147483647", ConfigType::Int),
    stored("max.connections.per.ip", "2147483647", ConfigType::Int),
    stored("max.connections.per.ip.overrides", "", ConfigType::String),
    stored("num.io.threads", "8", ConfigType::Int),
    stored("num.network.threads", "3", ConfigType::Int),
    stored("num.recovery.threads.per.data.dir", "2", ConfigType::Int),
    stored("num.replica.fetchers", "1", ConfigType::Int),
    stored(
        "replica.alter.log.dirs.io.max.bytes.per.second",
        "9223372036854775807",
        ConfigType::Long,
    ),
    stored(
        "sasl.kerberos.min.time.before.relogin",
        "60000",
        ConfigType::Long,
    ),
    stored(
        "sasl.kerberos.ticket.renew.jitter",
        "0.05",
        ConfigType::Double,
    ),
    stored(
        "sasl.kerberos.ticket.renew.window.factor",
        "0.8",
        ConfigType::Double,
    ),
    stored("log.cleaner.backoff.ms", "15000", ConfigType::Long),
    stored(
        "log.cleaner.dedupe.buffer.size",
        "134217728",
        ConfigType::Long,
    ),
    stored(
        "log.cleaner.io.buffer.load.factor",
        "0.9",
        ConfigType::Double,
    ),
    stored("log.cleaner.io.buffer.size", "524288", ConfigType::Int),
    stored(
        "log.cleaner.io.max.bytes.per.second",
        "1.7976931348623157E308",
        ConfigType::Double,
    ),
    stored("log.cleaner.threads", "1", ConfigType::Int),
];

/// The topic config a dynamic broker config sets the default of.
pub fn topic_default_of(broker_config: &str) -> Option<&'static str> {
    BROKER_TOPIC_DEFAULTS
        .iter()
        .find(|(b, _)| *b == broker_config)
        .map(|(_, t)| *t)
}

/// Type, default and doc of a dynamic broker config Tern accepts.
pub fn broker_def(name: &str) -> Option<&'static ConfigDef> {
    match topic_default_of(name) {
        Some(topic) => def(topic),
        None => BROKER_ONLY_CONFIGS.iter().find(|d| d.name == name),
    }
}

/// Checks one dynamic broker config `name=value`, as its topic config is checked.
pub fn validate_broker(name: &str, value: &str) -> Result<(), String> {
    match topic_default_of(name) {
        Some(topic) => validate(topic, value),
        None => {
            let d =
                broker_def(name).ok_or_else(|| format!("{name} is not a dynamic broker config"))?;
            check_type(d, value)
        }
    }
}

fn check_type(d: &ConfigDef, value: &str) -> Result<(), String> {
    let ok = match d.kind {
        ConfigType::Boolean => {
            value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
        }
        ConfigType::Int => value.parse::<i32>().is_ok(),
        ConfigType::Long => value.parse::<i64>().is_ok(),
        ConfigType::Double => value.parse::<f64>().is_ok_and(f64::is_finite),
        ConfigType::String | ConfigType::List => d.allowed.is_empty() || d.allowed.contains(&value),
    };
    match ok {
        true => Ok(()),
        false => Err(format!("invalid value {value:?} for {}", d.name)),
    }
}

/// Checks one `name=value`; the error text goes to the client with INVALID_CONFIG.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let d = def(name).ok_or_else(|| format!("unknown topic config {name}"))?;
    check_type(d, value)?;
    // Kafka's ranges for the numeric configs that have one.
    let range: Option<(f64, f64)> = match name {
        "compression.gzip.level" => (value != "-1").then_some((1.0, 9.0)),
        "compression.lz4.level" => Some((1.0, 17.0)),
        "compression.zstd.level" => Some((-131072.0, 22.0)),
        "min.cleanable.dirty.ratio" => Some((0.0, 1.0)),
        "max.compaction.lag.ms" => Some((1.0, f64::MAX)),
        "min.compaction.lag.ms" | "segment.jitter.ms" | "file.delete.delay.ms" => {
            Some((0.0, f64::MAX))
        }
        "message.timestamp.after.max.ms" | "message.timestamp.before.max.ms" => {
            Some((0.0, f64::MAX))
        }
        "local.retention.bytes" | "local.retention.ms" => Some((-2.0, f64::MAX)),
        "segment.index.bytes" => Some((4.0, f64::MAX)),
        _ => None,
    };
    if let Some((lo, hi)) = range {
        if value.parse::<f64>().is_ok_and(|v| v < lo || v > hi) {
            return Err(format!("{name} must be in [{lo}, {hi}]"));
        }
    }
    let positive = [
        "segment.bytes",
        "max.message.bytes",
        "index.interval.bytes",
        "min.insync.replicas",
        "segment.ms",
    ];
    if positive.contains(&name) && value.parse::<i64>().is_ok_and(|v| v <= 0) {
        return Err(format!("{name} must be positive"));
    }
    if name == "segment.bytes" && value.parse::<i64>().is_ok_and(|v| v < 14) {
        return Err("segment.bytes must be at least 14".into());
    }
    Ok(())
}

/// The effective value of `name` for a topic whose explicit configs are `set`.
pub fn value<'a>(set: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    match set.get(name) {
        Some(v) => v,
        None => def(name).map_or("", |d| d.default),
    }
}

fn number(set: &BTreeMap<String, String>, name: &str) -> i64 {
    value(set, name)
        .parse()
        .unwrap_or_else(|_| def(name).and_then(|d| d.default.parse().ok()).unwrap_or(0))
}

/// Storage settings of a partition of a topic with these explicit configs.
pub fn log_config(set: &BTreeMap<String, String>, cache_bytes: usize) -> LogConfig {
    LogConfig {
        segment_bytes: number(set, "segment.bytes") as u64,
        segment_ms: Duration::from_millis(number(set, "segment.ms").max(1) as u64),
        index_interval_bytes: number(set, "index.interval.bytes").max(1) as u64,
        max_message_bytes: number(set, "max.message.bytes").max(0) as usize,
        log_append_time: value(set, "message.timestamp.type") == "LogAppendTime",
        cache_bytes,
        retention_ms: u64::try_from(number(set, "retention.ms"))
            .ok()
            .map(Duration::from_millis),
        retention_bytes: u64::try_from(number(set, "retention.bytes")).ok(),
        delete_enabled: value(set, "cleanup.policy")
            .split(',')
            .any(|p| p == "delete"),
        compact_enabled: value(set, "cleanup.policy")
            .split(',')
            .any(|p| p == "compact"),
        delete_retention_ms: Duration::from_millis(number(set, "delete.retention.ms").max(0) as u64),
        min_compaction_lag: Duration::from_millis(
            number(set, "min.compaction.lag.ms").max(0) as u64
        ),
        max_compaction_lag: Duration::from_millis(
            number(set, "max.compaction.lag.ms").max(1) as u64
        ),
        min_cleanable_dirty_ratio: value(set, "min.cleanable.dirty.ratio")
            .parse::<f64>()
            .unwrap_or(0.5)
            .clamp(0.0, 1.0),
        compaction_map_bytes: LogConfig::default().compaction_map_bytes,
        flush_ms: Some(number(set, "flush.ms"))
            .filter(|&v| (0..i64::MAX).contains(&v))
            .map(|v| Duration::from_millis(v as u64)),
        flush_messages: Some(number(set, "flush.messages"))
            .filter(|&v| v > 0 && v < i64::MAX)
            .map(|v| v as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_types_and_enums() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("segment.bytes", "0").is_err());
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("no.such.config", "1").is_err());
        assert!(validate("max.compaction.lag.ms", "3600000").is_ok());
        assert!(validate("max.compaction.lag.ms", "0").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.1").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "half").is_err());
        assert!(validate("preallocate", "TRUE").is_ok());
        assert!(validate("preallocate", "yes").is_err());
        assert!(validate("compression.gzip.level", "-1").is_ok());
        assert!(validate("compression.gzip.level", "0").is_err());
        assert!(validate("compression.zstd.level", "-5").is_ok());
        let mut set = BTreeMap::new();
        set.insert("max.message.bytes".to_string(), "2000".to_string());
        set.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let log = log_config(&set, 0);
        assert_eq!(log.max_message_bytes, 2000);
        assert!(log.log_append_time);
        assert_eq!(log.segment_bytes, 1 << 30);
        assert_eq!(log.retention_ms, Some(Duration::from_millis(604_800_000)));
        assert_eq!(log.retention_bytes, None);
        assert!(log.delete_enabled);
        assert_eq!((log.flush_ms, log.flush_messages), (None, None));
        set.insert("retention.ms".into(), "-1".into());
        set.insert("cleanup.policy".into(), "compact".into());
        set.insert("flush.messages".into(), "100".into());
        let log = log_config(&set, 0);
        assert_eq!(log.retention_ms, None);
        assert!(!log.delete_enabled);
        assert!(log.compact_enabled);
        assert_eq!(log.flush_messages, Some(100));
        for d in TOPIC_CONFIGS {
            assert!(
                validate(d.name, d.default).is_ok(),
                "{} default must validate",
                d.name
            );
        }
        for (broker, topic) in BROKER_TOPIC_DEFAULTS {
            assert!(def(topic).is_some(), "{broker} sets the default of {topic}");
        }
        for d in BROKER_ONLY_CONFIGS {
            assert!(validate_broker(d.name, d.default).is_ok(), "{}", d.name);
        }
        assert!(validate_broker("log.retention.ms", "soon").is_err());
        assert!(validate_broker("log.retention.ms", "60000").is_ok());
        assert!(validate_broker("log.cleaner.threads", "2").is_ok());
        assert!(validate_broker("num.network.threads", "2").is_ok());
        assert!(
            validate_broker("log.dirs", "/data").is_err(),
            "not dynamic in Kafka either"
        );
    }
}
