//! How `strom consume` prints records: a kcat-style template (`%t %p %o %k %v %T %h`) or one JSON
//! object per record (`--output json`).
//!
//! Template escapes: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%v` value, `%T` timestamp
//! (ms), `%h` headers as `k=v,k=v`, `%%` a percent sign, `\n` `\t` `\\` as in C. A null key or value
//! prints as nothing. A template that does not end in a newline gets one, so one record is one line.

use std::io::Write;

use anyhow::bail;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// The fields of one record, as the printers need them.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

impl Template {
    /// Parses a template; an unknown `%x` or a trailing `%` or `\` is an error.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = s.chars();
        let flush = |text: &mut Vec<u8>, pieces: &mut Vec<Piece>| {
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let piece = match chars.next() {
                        Some('t') => Piece::Topic,
                        Some('p') => Piece::Partition,
                        Some('o') => Piece::Offset,
                        Some('k') => Piece::Key,
                        Some('v') => Piece::Value,
                        Some('T') => Piece::Timestamp,
                        Some('h') => Piece::Headers,
                        Some('%') => {
                            text.push(b'%');
                            continue;
                        }
                        Some(other) => {
                            bail!("unknown format field %{other} (use %t %p %o %k %v %T %h or %%)")
                        }
                        None => bail!("format ends with a lone %"),
                    };
                    flush(&mut text, &mut pieces);
                    pieces.push(piece);
                }
                '\\' => match chars.next() {
                    Some('n') => text.push(b'\n'),
                    Some('t') => text.push(b'\t'),
                    Some('\\') => text.push(b'\\'),
                    Some(other) => bail!("unknown escape \\{other} (use \\n \\t \\\\)"),
                    None => bail!("format ends with a lone \\"),
                },
                c => {
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let ends_in_newline = text.last() == Some(&b'\n');
        if !ends_in_newline {
            text.push(b'\n');
        }
        flush(&mut text, &mut pieces);
        Ok(Self(pieces))
    }

    /// Whether the template prints headers (collecting them costs an allocation per record).
    pub fn uses_headers(&self) -> bool {
        self.0.contains(&Piece::Headers)
    }

    /// Appends one record, rendered, to `out`.
    pub fn render(&self, r: &View<'_>, out: &mut Vec<u8>) {
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Topic => out.extend_from_slice(r.topic.as_bytes()),
                Piece::Partition => {
                    let _ = write!(out, "{}", r.partition);
                }
                Piece::Offset => {
                    let _ = write!(out, "{}", r.offset);
                }
                Piece::Timestamp => {
                    let _ = write!(out, "{}", r.timestamp);
                }
                Piece::Key => out.extend_from_slice(r.key.unwrap_or_default()),
                Piece::Value => out.extend_from_slice(r.value.unwrap_or_default()),
                Piece::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(v.unwrap_or_default());
                    }
                }
            }
        }
    }
}

fn text(b: Option<&[u8]>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

/// Appends one record as a JSON object and a newline. Keys, values and header values are UTF-8
/// text (invalid bytes replaced); null stays null.
pub fn render_json(r: &View<'_>, out: &mut Vec<u8>) {
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_string(), text(*v)))
        .collect();
    let obj = serde_json::json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": text(r.key),
        "value": text(r.value),
        "headers": headers,
    });
    let _ = serde_json::to_writer(&mut *out, &obj);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a [(&'a str, Option<&'a [u8]>)]) -> View<'a> {
        View {
            topic: "orders",
            partition: 3,
            offset: 42,
            timestamp: 1_700_000_000_000,
            key: Some(b"order-1"),
            value: Some(b"placed"),
            headers,
        }
    }

    fn render(t: &str, v: &View<'_>) -> String {
        let mut out = Vec::new();
        Template::parse(t).unwrap().render(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates_render_every_field() {
        let h = [("trace", Some(&b"abc"[..])), ("empty", None)];
        let v = view(&h);
        assert_eq!(render("%k=%v", &v), "order-1=placed\n");
        assert_eq!(
            render("%t/%p@%o %T [%h] 100%%\\t!\\n", &v),
            "orders/3@42 1700000000000 [trace=abc,empty=] 100%\t!\n"
        );
        let nulls = View {
            key: None,
            value: None,
            ..view(&[])
        };
        assert_eq!(render("<%k><%v><%h>", &nulls), "<><><>\n");
    }

    #[test]
    fn bad_templates_are_errors() {
        for bad in ["%x", "abc%", "\\q", "x\\"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_is_one_object_per_line() {
        let h = [("trace", Some(&b"abc"[..]))];
        let mut out = Vec::new();
        render_json(&view(&h), &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["key"], "order-1");
        assert_eq!(v["offset"], 42);
        assert_eq!(v["headers"]["trace"], "abc");
    }
}
