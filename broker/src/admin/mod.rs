//! The admin CLI: `tern group|topic|cluster|txn ...`, talking to brokers over the Kafka protocol
//! (like `rpk` or `kafka-topics.sh`), with readable tables or `--json`.

use anyhow::{bail, Context, Result};
use comfy_table::{presets::NOTHING, Table};
use kafka_protocol::ResponseError;
use serde::Serialize;

pub mod client;
pub mod cluster;
pub mod group;
pub mod topic;
pub mod txn;

pub(crate) fn error_text(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => "none".into(),
    }
}

pub(crate) fn check(code: i16, what: &str) -> Result<()> {
    if code != 0 {
        bail!("{what}: {}", error_text(code));
    }
    Ok(())
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    emit(&serde_json::to_string_pretty(value)?)
}

/// Writes a line of the command's output. A reader that went away (`tern group list | head -1`)
/// ends the output quietly; `println!` would panic. Other write errors are reported.
pub(crate) fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written.context("write to stdout")?),
    }
}
