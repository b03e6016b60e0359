//! The command-line tools: one module per `strom` subcommand group, and what they share.

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod format;
pub mod groups;
pub mod produce;
pub mod queue;
pub mod topics;
pub mod work;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and templates for people.
    Text,
    /// One JSON object per record or row, for programs.
    Json,
}

/// Parses `KEY=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}
