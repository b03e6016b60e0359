//! `GET /api/topics/{topic}/records`: a page of a topic's records, decoded for people (JSON or
//! text where the bytes are, hex otherwise), for the console's topic and dead-letter views.
//!
//! Bounded: at most [`MAX_RECORDS`] records a page, payloads cut at [`MAX_TEXT`] bytes of text
//! or [`MAX_HEX`] bytes shown as hex, and a page stops once it holds [`MAX_PAGE_BYTES`].
//! Records are read from the segment maps as consumers read them; batches compressed by
//! producers are decompressed with the same bound as the broker's own readers.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use strom_protocol::batch::{BatchIter, Records, validate};
use strom_protocol::compression::{MAX_DECOMPRESSED_BATCH, decompress};

use super::Http;
use super::error::{Answer, ApiError, text};
use crate::core::topics::Topic;

/// Most records one page returns.
const MAX_RECORDS: usize = 500;
/// Records a page returns unless asked.
const DEFAULT_RECORDS: usize = 20;
/// Text (or JSON) payload bytes shown; longer ones are cut.
const MAX_TEXT: usize = 16 * 1024;
/// Binary payload bytes shown as hex.
const MAX_HEX: usize = 4096;
/// A page stops collecting records once their shown payloads reach this.
const MAX_PAGE_BYTES: usize = 4 << 20;
/// Bytes read from a partition at a time.
const READ_BYTES: usize = 1 << 20;

/// The query of `GET /api/topics/{topic}/records`.
#[derive(Debug, Deserialize)]
pub(super) struct RecordsQuery {
    partition: Option<i32>,
    offset: Option<i64>,
    limit: Option<usize>,
}

/// A key, value or header value as the console shows it: JSON or text where the bytes are,
/// hex otherwise; cut to a bound, with the full size.
fn payload(bytes: Option<&[u8]>) -> Value {
    let Some(b) = bytes else { return Value::Null };
    let (encoding, data, truncated) = match std::str::from_utf8(b) {
        Ok(text) => {
            let trimmed = text.trim_start();
            let is_json = (trimmed.starts_with('{') || trimmed.starts_with('['))
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            let cut = floor_char_boundary(text, MAX_TEXT);
            (
                if is_json { "json" } else { "text" },
                text[..cut].to_string(),
                cut < text.len(),
            )
        }
        Err(_) => {
            let shown = &b[..b.len().min(MAX_HEX)];
            let mut hex = String::with_capacity(shown.len() * 2);
            for byte in shown {
                use std::fmt::Write as _;
                let _ = write!(hex, "{byte:02x}");
            }
            ("hex", hex, shown.len() < b.len())
        }
    };
    json!({ "encoding": encoding, "data": data, "size": b.len(), "truncated": truncated })
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// One record as the API shows it, with the bytes its payloads take.
fn record_json(partition: i32, rec: &strom_protocol::batch::Record) -> (Value, usize) {
    let headers: Vec<Value> = rec
        .headers()
        .map(|h| json!({ "key": h.key, "value": payload(h.value) }))
        .collect();
    let size = rec.key.as_ref().map_or(0, |k| k.len().min(MAX_TEXT))
        + rec.value.as_ref().map_or(0, |v| v.len().min(MAX_TEXT))
        + 64 * headers.len();
    (
        json!({
            "partition": partition,
            "offset": rec.offset,
            "timestamp": rec.timestamp,
            "key": payload(rec.key.as_deref()),
            "value": payload(rec.value.as_deref()),
            "headers": headers,
        }),
        size,
    )
}

/// Up to `limit` records of `part` from `from` on, in offset order (control batches and
/// records lost under the read skipped), stopping at `budget` bytes of payloads.
fn read_records(
    part: &crate::core::partition::Partition,
    from: i64,
    limit: usize,
    budget: &mut usize,
) -> Result<Vec<(i64, Value)>, ApiError> {
    let reader = part.reader();
    let mut at = from.max(reader.start_offset());
    let mut out = Vec::new();
    let fail = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    'read: while at < reader.end_offset() && out.len() < limit && *budget > 0 {
        let r = match reader.read(at, READ_BYTES) {
            Ok(r) => r,
            // Retention moved the start under the read: go on from the new start.
            Err(strom_storage::StorageError::OffsetOutOfRange { start, .. }) if start > at => {
                at = start;
                continue;
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        if r.data.is_empty() {
            break;
        }
        for item in BatchIter::new(&r.data) {
            let (range, header) = item.map_err(|e| fail(e.to_string()))?;
            let raw = r.data.slice(range);
            at = header.next_offset();
            if header.is_control() {
                continue;
            }
            validate(&raw).map_err(|e| fail(e.to_string()))?;
            let plain = decompress(&raw, &header, MAX_DECOMPRESSED_BATCH)
                .map_err(|e| fail(e.to_string()))?;
            for rec in Records::new(plain).map_err(|e| fail(e.to_string()))? {
                let rec = rec.map_err(|e| fail(e.to_string()))?;
                if rec.offset < from {
                    continue;
                }
                let (value, size) = record_json(part.index, &rec);
                out.push((rec.timestamp, value));
                *budget = budget.saturating_sub(size);
                if out.len() >= limit || *budget == 0 {
                    break 'read;
                }
            }
        }
    }
    Ok(out)
}

/// The records a page shows (see docs/http.md for which), newest first over a whole topic.
fn page(t: &Topic, q: &RecordsQuery) -> Result<Vec<Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_RECORDS).clamp(1, MAX_RECORDS);
    let mut budget = MAX_PAGE_BYTES;
    let tail = |p: &crate::core::partition::Partition| {
        let r = p.reader();
        (r.end_offset() - limit as i64).max(r.start_offset())
    };
    Ok(match q.partition {
        Some(index) => {
            let part = t.partition(index).ok_or_else(|| {
                ApiError::not_found(format!("topic {} has no partition {index}", t.name))
            })?;
            let from = q.offset.unwrap_or_else(|| tail(part));
            read_records(part, from, limit, &mut budget)?
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        }
        None if q.offset.is_some() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "offset needs a partition",
            ));
        }
        None => {
            let mut all = Vec::new();
            for p in &t.partitions {
                all.extend(read_records(p, tail(p), limit, &mut budget)?);
            }
            // Newest first; the sort is stable, so equal timestamps keep offset order reversed.
            all.reverse();
            all.sort_by_key(|r| std::cmp::Reverse(r.0));
            all.truncate(limit);
            all.into_iter().map(|(_, v)| v).collect()
        }
    })
}

/// `GET /api/topics/{topic}/records`: a page of records (see docs/http.md for which).
pub(super) async fn records(
    State(http): State<Http>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<RecordsQuery>, QueryRejection>,
) -> Answer {
    let name = text(name)?;
    let q = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let t = http
        .core
        .topics
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no topic {name}")))?;
    let q = q.0;
    let topic = t.clone();
    // Reading and decoding up to MAX_PAGE_BYTES is work for the blocking pool, not a runtime
    // worker that produce and fetch requests need.
    let records = tokio::task::spawn_blocking(move || page(&topic, &q))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({ "topic": &*t.name, "records": records })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_text_or_hex() {
        assert_eq!(payload(None), Value::Null);
        assert_eq!(payload(Some(br#"{"a":1}"#))["encoding"], "json");
        assert_eq!(payload(Some(b"{not json"))["encoding"], "text");
        assert_eq!(payload(Some(b"42"))["encoding"], "text");
        let bin = payload(Some(&[0xff, 0x00, 0x10]));
        assert_eq!(bin["encoding"], "hex");
        assert_eq!(bin["data"], "ff0010");
        assert_eq!(bin["size"], 3);
    }

    #[test]
    fn long_payloads_are_cut_on_a_char_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let p = payload(Some(text.as_bytes()));
        assert_eq!(p["truncated"], true);
        assert_eq!(p["size"], text.len());
        assert!(p["data"].as_str().is_some_and(|d| d.len() <= MAX_TEXT));
        let bin = vec![0xffu8; MAX_HEX * 2];
        let p = payload(Some(&bin));
        assert_eq!(p["data"].as_str().map(str::len), Some(MAX_HEX * 2));
        assert_eq!(p["truncated"], true);
    }
}
