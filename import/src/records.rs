//! An object's bytes as records: gzip undone (by the `.gz` extension or the gzip magic
//! bytes), then a JSON array (the text starts with `[`) or NDJSON (one JSON value a line;
//! blank lines skipped). Each record keeps its position: its line for NDJSON, its index
//! (from 1) in an array.

use std::io::Read as _;

use serde_json::Value;

/// One record, or why its line is not JSON.
#[derive(Debug)]
pub struct Record {
    /// The line (NDJSON) or the element (array), from 1.
    pub position: u64,
    pub value: Result<Value, String>,
}

/// Whether `name` or the first bytes say gzip.
pub fn is_gzip(name: &str, bytes: &[u8]) -> bool {
    name.ends_with(".gz") || bytes.starts_with(&[0x1f, 0x8b])
}

/// The object's records; an error when the object as a whole cannot be read (a broken
/// gzip stream, a JSON array that is not one, text that is not UTF-8).
pub fn records(name: &str, bytes: &[u8]) -> Result<Vec<Record>, String> {
    let plain;
    let bytes = if is_gzip(name, bytes) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("is not a readable gzip stream: {e}"))?;
        plain = out;
        &plain[..]
    } else {
        bytes
    };
    let text = std::str::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text: {e}"))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> =
            serde_json::from_str(text).map_err(|e| format!("is not a JSON array: {e}"))?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| Record {
                position: i as u64 + 1,
                value: Ok(value),
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Record {
            position: i as u64 + 1,
            value: serde_json::from_str(line).map_err(|e| format!("is not JSON: {e}")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn ndjson_arrays_and_gzip() {
        let ndjson = b"{\"a\":1}\n\n{\"a\":2}\nnot json\n";
        let got = records("x.ndjson", ndjson).unwrap();
        assert_eq!(
            got.iter().map(|r| r.position).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert!(
            got[2]
                .value
                .as_ref()
                .unwrap_err()
                .starts_with("is not JSON")
        );
        let array = records("x.json", b" [{\"a\":1},{\"a\":2}]").unwrap();
        assert_eq!(array[1].position, 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(ndjson).unwrap();
        let gz = gz.finish().unwrap();
        // By the magic bytes, whatever the name says.
        assert_eq!(records("x.log", &gz).unwrap().len(), 3);
        let broken = &gz[..gz.len() / 2];
        assert!(
            records("x.gz", broken)
                .unwrap_err()
                .starts_with("is not a readable gzip stream")
        );
        assert!(
            records("x.json", b"[{\"a\":1},")
                .unwrap_err()
                .starts_with("is not a JSON array")
        );
    }
}
