//! Just enough of `multipart/form-data` (RFC 7578) to read a file upload: the parts of a body by
//! the `name` of their `Content-Disposition`.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

/// The parts of a `multipart/form-data` body, by name, or what is wrong with it.
pub(super) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let boundary = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| {
            rest.split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))
        })
        .map(|boundary| boundary.trim_matches('"'))
        .ok_or("the body must be multipart/form-data with a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut parts = BTreeMap::new();
    for part in split(body, delimiter.as_bytes()).into_iter().skip(1) {
        if part.starts_with(b"--") {
            break;
        }
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let end = find(part, b"\r\n\r\n").ok_or("a part has no blank line after its headers")?;
        let head = String::from_utf8_lossy(&part[..end]);
        let name = head
            .lines()
            .filter(|line| {
                line.to_ascii_lowercase()
                    .starts_with("content-disposition:")
            })
            .flat_map(|line| line.split(';'))
            .find_map(|field| field.trim().strip_prefix("name="))
            .map(|name| name.trim_matches('"').to_owned())
            .ok_or("a part has no name")?;
        parts.insert(name, part[end + 4..].to_vec());
    }
    Ok(parts)
}

/// `haystack` split at every occurrence of `needle`.
fn split<'a>(mut haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    while let Some(at) = find(haystack, needle) {
        pieces.push(&haystack[..at]);
        haystack = &haystack[at + needle.len()..];
    }
    pieces.push(haystack);
    pieces
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
