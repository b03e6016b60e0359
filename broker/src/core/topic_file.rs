//! A topic's metadata file, `<data-dir>/meta/topics/<name>.topic`: its format, and topic ids.
//!
//! One small text file per topic, written atomically by [`super::topics`] and ending with a
//! CRC-32 line:
//!
//! ```text
//! name=orders
//! id=4f1c5b0e8a2d4e6f9b3c7a1d2e5f8091
//! partitions=12
//! hosted=0,3,6,9
//! config.retention.ms=86400000
//! crc32=1c291ca3
//! ```
//!
//! The id (a random 128-bit value, Kafka's topic id) tells a topic from an older one of the same
//! name; files written before ids existed get one derived from the name at load. `hosted` lists
//! the partitions this broker holds replicas of, when it is not all of them (the metadata image
//! places partitions over the brokers of a cluster; a single broker holds all). Only settings the
//! topic overrides are stored.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::BrokerError;

/// A topic id: 16 bytes, as Kafka's UUIDs.
pub type TopicId = [u8; 16];

/// A new random topic id (a version 4 UUID's layout).
pub(crate) fn new_topic_id(name: &str) -> TopicId {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process and then stepped per
    // instance; mixing in the time and the name makes ids of one process distinct too.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u128(nanos);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// The id of a topic whose metadata predates ids: derived from its name, so it stays the same
/// across restarts without rewriting the file.
fn legacy_topic_id(name: &str) -> TopicId {
    let a = crc32fast::hash(name.as_bytes());
    let b = crc32fast::hash(format!("{name}/topic-id").as_bytes());
    let c = crc32fast::hash(format!("topic-id/{name}").as_bytes());
    let d = crc32fast::hash(format!("{name}#{}", name.len()).as_bytes());
    let mut id = [0u8; 16];
    for (i, v) in [a, b, c, d].iter().enumerate() {
        id[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn hex(id: &TopicId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<TopicId> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// What a topic's metadata file holds.
pub(crate) struct TopicMeta {
    pub name: String,
    pub id: TopicId,
    pub partitions: u32,
    /// The partitions hosted here, when not all (ascending).
    pub hosted: Option<Vec<u32>>,
    pub overrides: BTreeMap<String, String>,
}

impl TopicMeta {
    /// The partitions hosted here.
    pub fn hosted(&self) -> Vec<u32> {
        match &self.hosted {
            Some(hosted) => hosted.clone(),
            None => (0..self.partitions).collect(),
        }
    }
}

pub(crate) fn encode_meta(m: &TopicMeta) -> String {
    let mut s = format!(
        "name={}\nid={}\npartitions={}\n",
        m.name,
        hex(&m.id),
        m.partitions
    );
    if let Some(hosted) = &m.hosted
        && hosted.iter().copied().ne(0..m.partitions)
    {
        let list: Vec<String> = hosted.iter().map(u32::to_string).collect();
        s.push_str(&format!("hosted={}\n", list.join(",")));
    }
    for (k, v) in &m.overrides {
        s.push_str(&format!("config.{k}={v}\n"));
    }
    let crc = crc32fast::hash(s.as_bytes());
    s.push_str(&format!("crc32={crc:08x}\n"));
    s
}

pub(crate) fn decode_meta(path: &Path, text: &str) -> Result<TopicMeta, BrokerError> {
    let bad = |reason: &str| BrokerError::Metadata {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let body_end = text
        .rfind("crc32=")
        .ok_or_else(|| bad("no checksum line"))?;
    let (body, crc_line) = text.split_at(body_end);
    let crc = u32::from_str_radix(crc_line.trim_start_matches("crc32=").trim(), 16)
        .map_err(|_| bad("unreadable checksum"))?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut name = None;
    let mut id = None;
    let mut partitions = None;
    let mut hosted = None;
    let mut overrides = BTreeMap::new();
    for line in body.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad("line without '='"))?;
        match k {
            "name" => name = Some(v.to_string()),
            "id" => id = Some(parse_hex(v).ok_or_else(|| bad("unreadable topic id"))?),
            "partitions" => partitions = v.parse().ok(),
            "hosted" if v.is_empty() => hosted = Some(Vec::new()),
            "hosted" => {
                let list: Result<Vec<u32>, _> = v.split(',').map(str::parse).collect();
                hosted = Some(list.map_err(|_| bad("unreadable hosted partitions"))?);
            }
            k => {
                let key = k
                    .strip_prefix("config.")
                    .ok_or_else(|| bad("unknown key"))?;
                overrides.insert(key.to_string(), v.to_string());
            }
        }
    }
    match (name, partitions) {
        (Some(n), Some(p))
            if p > 0
                && hosted.as_ref().is_none_or(|h: &Vec<u32>| {
                    h.is_sorted_by(|a, b| a < b) && h.iter().all(|i| *i < p)
                }) =>
        {
            Ok(TopicMeta {
                id: id.unwrap_or_else(|| legacy_topic_id(&n)),
                name: n,
                partitions: p,
                hosted,
                overrides,
            })
        }
        _ => Err(bad("missing name or partitions")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_damage() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        let id = new_topic_id("orders");
        let text = encode_meta(&TopicMeta {
            name: "orders".into(),
            id,
            partitions: 12,
            hosted: None,
            overrides: o.clone(),
        });
        let p = Path::new("x.topic");
        let m = decode_meta(p, &text).unwrap();
        assert_eq!(
            (m.name.as_str(), m.id, m.partitions, m.overrides),
            ("orders", id, 12, o)
        );
        let damaged = text.replace("=12", "=13");
        assert!(decode_meta(p, &damaged).is_err());
        assert!(decode_meta(p, "name=x\n").is_err());
    }

    #[test]
    fn topic_ids_are_unique_and_legacy_files_get_a_stable_one() {
        let a = new_topic_id("orders");
        let b = new_topic_id("orders");
        assert_ne!(a, b, "a recreated topic gets a new id");
        assert_eq!(a[6] >> 4, 4, "version 4 layout");
        // A file written before ids existed: no id line.
        let mut body = "name=old\npartitions=2\n".to_string();
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc32={crc:08x}\n"));
        let p = Path::new("old.topic");
        let first = decode_meta(p, &body).unwrap().id;
        assert_eq!(first, decode_meta(p, &body).unwrap().id);
        assert_eq!(first, legacy_topic_id("old"));
        assert_ne!(first, legacy_topic_id("older"));
    }
}
