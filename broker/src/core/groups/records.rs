//! The records of `__consumer_offsets`: a committed offset's key (group, topic, partition) and
//! value (offset, commit time, metadata), version 1 of strom's own layout (big-endian, u16
//! length-prefixed strings). A deleted commit is the key with no value (a tombstone). Both the
//! committing side (`offsets`) and the loading side (`leadership`) use this one format.

/// The key of `group`'s committed offset of `topic`-`partition`.
pub(super) fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + group.len() + topic.len());
    k.push(1);
    k.extend_from_slice(&(group.len() as u16).to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The value of a committed `offset`, made at `now_ms`.
pub(super) fn offset_value(offset: i64, now_ms: i64, metadata: Option<&str>) -> Vec<u8> {
    let meta = metadata.unwrap_or("").as_bytes();
    let mut v = Vec::with_capacity(19 + meta.len());
    v.push(1);
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&now_ms.to_be_bytes());
    v.extend_from_slice(&(meta.len() as u16).to_be_bytes());
    v.extend_from_slice(meta);
    v
}

/// (group, topic, partition) of an offset key; `None` for another layout or a torn key.
pub(super) fn parse_key(k: &[u8]) -> Option<(String, String, i32)> {
    let mut r = k.strip_prefix(&[1])?;
    let mut string = || -> Option<String> {
        let (len, rest) = r.split_at_checked(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let (s, rest) = rest.split_at_checked(len)?;
        r = rest;
        String::from_utf8(s.to_vec()).ok()
    };
    let group = string()?;
    let topic = string()?;
    let p = i32::from_be_bytes(r.try_into().ok()?);
    Some((group, topic, p))
}

/// (offset, metadata) of an offset value; `None` for another layout or a torn value.
pub(super) fn parse_value(v: &[u8]) -> Option<(i64, Option<String>)> {
    let r = v.strip_prefix(&[1])?;
    let offset = i64::from_be_bytes(r.get(..8)?.try_into().ok()?);
    let len = u16::from_be_bytes(r.get(16..18)?.try_into().ok()?) as usize;
    let meta = std::str::from_utf8(r.get(18..18 + len)?).ok()?;
    Some((offset, (!meta.is_empty()).then(|| meta.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let k = offset_key("g", "orders", 7);
        assert_eq!(parse_key(&k), Some(("g".into(), "orders".into(), 7)));
        let v = offset_value(42, 1, Some("meta"));
        assert_eq!(parse_value(&v), Some((42, Some("meta".into()))));
        assert_eq!(parse_value(&offset_value(3, 1, None)), Some((3, None)));
        assert_eq!(parse_key(&k[..k.len() - 1]), None);
        assert_eq!(parse_value(&v[..5]), None);
    }
}
