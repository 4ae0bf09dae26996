//! Turns a request body into event items: gzip decompression (with a cap that defeats
//! decompression bombs) and the three accepted shapes — one JSON object, a JSON array, or
//! NDJSON (one object per line).

use std::io::Read;

use serde_json::value::RawValue;

use crate::api::ApiError;

/// How the body was shaped; a single object answers differently from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch,
}

/// One item of a body: the JSON text of one event, or why that item is not JSON.
pub type Item<'a> = Result<&'a RawValue, String>;

/// Decompresses `body` when `content_encoding` says so, never producing more than `limit`
/// bytes.
pub fn decode_body(
    body: bytes::Bytes,
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    match content_encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(body),
        Some(enc) if enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("x-gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            // Read one byte past the limit to tell "exactly at the limit" from "over it".
            let mut decoder = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1);
            decoder
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadEncoding(format!("body is not valid gzip: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "decompressed body exceeds the limit of {limit} bytes"
                )));
            }
            Ok(out.into())
        }
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Splits a decoded body into event items. `ndjson` forces line-by-line reading (the
/// request said `application/x-ndjson`); otherwise the shape is recognised from the text.
/// A body of more than `max_items` items is refused (413) once they are counted: the items
/// past the limit are neither kept nor, in NDJSON, parsed, so a small gzip body that
/// inflates to a million lines costs no more than one at the limit.
pub fn split_items(
    body: &[u8],
    ndjson: bool,
    max_items: usize,
) -> Result<(Shape, Vec<Item<'_>>), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::InvalidBody(format!("body is not valid UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ApiError::InvalidBody("body is empty".into()));
    }
    if !ndjson {
        if trimmed.starts_with('[') {
            let mut de = serde_json::Deserializer::from_str(trimmed);
            let (items, count) =
                serde::Deserializer::deserialize_seq(&mut de, FirstItems { max: max_items })
                    .and_then(|items| de.end().map(|()| items))
                    .map_err(|e| {
                        ApiError::InvalidBody(format!("body is not a valid JSON array: {e}"))
                    })?;
            if count == 0 {
                return Err(ApiError::InvalidBody("the array holds no events".into()));
            }
            check_count(count, max_items)?;
            return Ok((Shape::Batch, items.into_iter().map(Ok).collect()));
        }
        match serde_json::from_str::<&RawValue>(trimmed) {
            Ok(one) => return Ok((Shape::Single, vec![Ok(one)])),
            // More than one value: the body is NDJSON.
            Err(e) if e.is_syntax() && e.to_string().starts_with("trailing characters") => {}
            Err(e) => {
                return Err(ApiError::InvalidBody(format!(
                    "body is not valid JSON: {e}"
                )));
            }
        }
    }
    let mut lines = text
        .split('\n')
        .map(|line| line.trim_matches(|c: char| c.is_ascii_whitespace()))
        .filter(|line| !line.is_empty());
    let items: Vec<Item<'_>> = lines
        .by_ref()
        .take(max_items)
        .map(|line| {
            serde_json::from_str::<&RawValue>(line)
                .map_err(|e| format!("line is not valid JSON: {e}"))
        })
        .collect();
    if items.is_empty() {
        return Err(ApiError::InvalidBody("body holds no events".into()));
    }
    check_count(items.len() + lines.count(), max_items)?;
    Ok((Shape::Batch, items))
}

/// More than `max_items` events in one request is refused as a whole.
fn check_count(count: usize, max_items: usize) -> Result<(), ApiError> {
    if count > max_items {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch holds {count} events; the limit is {max_items}"
        )));
    }
    Ok(())
}

/// Reads a JSON array, keeping its first `max` elements and counting (and checking) the
/// rest without keeping them.
struct FirstItems {
    max: usize,
}

impl<'de> serde::de::Visitor<'de> for FirstItems {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while items.len() < self.max {
            match seq.next_element::<&'de RawValue>()? {
                Some(item) => items.push(item),
                None => {
                    let count = items.len();
                    return Ok((items, count));
                }
            }
        }
        let mut count = items.len();
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok((items, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> bytes::Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap().into()
    }

    #[test]
    fn recognises_single_array_and_ndjson() {
        let (shape, items) = split_items(br#" {"a":1} "#, false, 10).unwrap();
        assert_eq!((shape, items.len()), (Shape::Single, 1));
        let (shape, items) = split_items(br#"[{"a":1},{"a":2}]"#, false, 10).unwrap();
        assert_eq!((shape, items.len()), (Shape::Batch, 2));
        let (shape, items) =
            split_items(b"{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":3}\n", false, 10).unwrap();
        assert_eq!((shape, items.len()), (Shape::Batch, 3));
        // A pretty-printed single object is still one event.
        let (shape, _) = split_items(b"{\n  \"a\": 1\n}\n", false, 10).unwrap();
        assert_eq!(shape, Shape::Single);
        // Declared NDJSON with one line is a batch of one.
        let (shape, _) = split_items(b"{\"a\":1}\n", true, 10).unwrap();
        assert_eq!(shape, Shape::Batch);
    }

    #[test]
    fn a_bad_ndjson_line_is_one_bad_item() {
        let (_, items) = split_items(b"{\"a\":1}\n{oops\n{\"a\":3}", false, 10).unwrap();
        assert!(items[0].is_ok() && items[1].is_err() && items[2].is_ok());
    }

    #[test]
    fn refuses_empty_and_broken_bodies() {
        for body in [
            &b""[..],
            b"   ",
            b"[]",
            b"[{\"a\":1}",
            b"{\"a\":",
            b"\xff\xfe",
        ] {
            assert!(split_items(body, false, 10).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_with_its_whole_count() {
        // A 1 KiB gzip body that inflates to half a million lines or array elements (the
        // fuzz target's memory bound caught these keeping an item, and for a bad line an
        // error message, per line): refused, every item counted.
        let too_many = [
            ("x\n".repeat(500_000), true, 500_000),
            (format!("1\n{}", "x\n".repeat(500_000)), false, 500_001),
            (format!("[{}1]", "1,".repeat(500_000)), false, 500_001),
        ];
        for (text, ndjson, count) in too_many {
            let body = decode_body(gzip(text.as_bytes()), Some("gzip"), 1 << 20).unwrap();
            match split_items(&body, ndjson, 1000) {
                Err(ApiError::PayloadTooLarge(message)) => assert_eq!(
                    message,
                    format!("the batch holds {count} events; the limit is 1000")
                ),
                other => panic!("expected 413 for {count} items, got {other:?}"),
            }
        }
        // At the limit: accepted. Past it, a broken array is still a broken body.
        assert_eq!(split_items(b"[1,2]", false, 2).unwrap().1.len(), 2);
        assert_eq!(split_items(b"1\n\n2\n", true, 2).unwrap().1.len(), 2);
        assert!(matches!(
            split_items(b"1\n2\n3", true, 2),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            split_items(b"[1,2,3,]", false, 2),
            Err(ApiError::InvalidBody(_))
        ));
    }

    #[test]
    fn gzip_round_trip_and_bomb_cap() {
        let data = br#"{"site_id":"x"}"#;
        assert_eq!(
            &decode_body(gzip(data), Some("gzip"), 1024).unwrap()[..],
            data
        );
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20_000);
        assert!(matches!(
            decode_body(bomb, Some("gzip"), 64 * 1024),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            decode_body(bytes::Bytes::from_static(b"not gzip"), Some("gzip"), 1024),
            Err(ApiError::BadEncoding(_))
        ));
        assert!(matches!(
            decode_body(bytes::Bytes::from_static(b"x"), Some("br"), 1024),
            Err(ApiError::UnsupportedEncoding(_))
        ));
    }
}
