//! Finds hex, base64 and byte-array spans in log text and decodes them, so the redactor can
//! mask a span whose bytes carry a credential: crates print WebSocket frames as
//! `payload: 0x7b22746f6b656e…`, buffers as `[123, 34, …]`, blobs as base64, and a text-only
//! filter would let a decodable token through.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};

/// Shortest span worth decoding (8 bytes of hex): shorter ones cannot hold a key and a value.
const MIN_SPAN: usize = 16;
/// Fewest numbers in a `[1, 2, …]` byte array worth decoding.
const MIN_ARRAY: usize = 8;
/// Decoded text is searched again this many times (a base64 blob inside a hex frame).
const MAX_DEPTH: usize = 2;

fn lenient(alphabet: &alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

fn is_run_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
}

/// Every way the run `run` (hex with or without `0x`, base64 standard or URL-safe) decodes.
fn decodings(run: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let hex_part = run
        .strip_prefix("0x")
        .or_else(|| run.strip_prefix("0X"))
        .unwrap_or(run);
    if hex_part.len() >= MIN_SPAN && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        let even = &hex_part[..hex_part.len() & !1];
        if let Ok(bytes) = hex::decode(even) {
            out.push(bytes);
        }
    }
    let body = run.trim_end_matches('=');
    // A base64 length of 4n+1 cannot be decoded: drop the dangling character.
    let body = if body.len() % 4 == 1 {
        &body[..body.len() - 1]
    } else {
        body
    };
    let url_safe = body.bytes().any(|b| b == b'-' || b == b'_');
    let standard = body.bytes().any(|b| b == b'+' || b == b'/');
    if !(url_safe && standard) {
        let engine = if url_safe {
            lenient(&alphabet::URL_SAFE)
        } else {
            lenient(&alphabet::STANDARD)
        };
        if let Ok(bytes) = engine.decode(body) {
            out.push(bytes);
        }
    }
    out
}

/// `[123, 34, 116, …]` at `start` (which holds `[`): the span's end and the bytes.
fn byte_array(b: &[u8], start: usize) -> Option<(usize, Vec<u8>)> {
    let mut i = start + 1;
    let mut bytes = Vec::new();
    loop {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        let from = i;
        while i < b.len() && b[i].is_ascii_digit() && i - from < 3 {
            i += 1;
        }
        if i == from {
            return None;
        }
        let n: u16 = std::str::from_utf8(&b[from..i]).ok()?.parse().ok()?;
        bytes.push(u8::try_from(n).ok()?);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b']') => {
                return (bytes.len() >= MIN_ARRAY).then_some((i + 1, bytes));
            }
            _ => return None,
        }
    }
}

/// Spans of `text` (byte ranges) holding an encoding whose decoded text makes `secret` true,
/// looking inside decoded text again up to [`MAX_DEPTH`].
pub(super) fn secret_spans(text: &str, secret: &dyn Fn(&str) -> bool) -> Vec<(usize, usize)> {
    spans_at_depth(text, secret, 0)
}

fn reveals(bytes: &[u8], secret: &dyn Fn(&str) -> bool, depth: usize) -> bool {
    let decoded = String::from_utf8_lossy(bytes);
    secret(&decoded)
        || (depth + 1 < MAX_DEPTH && !spans_at_depth(&decoded, secret, depth + 1).is_empty())
}

fn spans_at_depth(text: &str, secret: &dyn Fn(&str) -> bool, depth: usize) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            if let Some((end, bytes)) = byte_array(b, i) {
                if reveals(&bytes, secret, depth) {
                    spans.push((i, end));
                }
                i = end;
                continue;
            }
            i += 1;
            continue;
        }
        if !is_run_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_run_byte(b[i]) {
            i += 1;
        }
        // Base64 padding: at most two `=`.
        for _ in 0..2 {
            if b.get(i) == Some(&b'=') {
                i += 1;
            }
        }
        let run = &text[start..i];
        if run.len() >= MIN_SPAN
            && decodings(run)
                .iter()
                .any(|bytes| reveals(bytes, secret, depth))
        {
            spans.push((start, i));
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn has_token(s: &str) -> bool {
        s.contains("token")
    }

    fn found(text: &str) -> Vec<&str> {
        secret_spans(text, &has_token)
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect()
    }

    #[test]
    fn hex_frame_payloads_are_found() {
        let hex = hex::encode(r#"{"type":"login","token":"abc"}"#);
        let line = format!("received frame <FRAME> payload: 0x{hex} end");
        assert_eq!(found(&line), [format!("0x{hex}")]);
        let upper = hex.to_uppercase();
        assert_eq!(found(&format!("p={upper}")), [upper.as_str()]);
        // Odd length (a cut-off dump) still decodes.
        let odd = &hex[..hex.len() - 1];
        assert_eq!(found(odd), [odd]);
    }

    #[test]
    fn base64_both_alphabets_padded_or_not() {
        let text = r#"{"token":"a?b>c"}"#;
        for encoded in [STANDARD.encode(text), URL_SAFE_NO_PAD.encode(text)] {
            let line = format!("blob {encoded} end");
            assert_eq!(found(&line), [encoded.as_str()], "{line}");
        }
    }

    #[test]
    fn byte_arrays_are_found() {
        let bytes: Vec<String> = br#"{"token":"x"}"#.iter().map(|b| b.to_string()).collect();
        let array = format!("[{}]", bytes.join(", "));
        assert_eq!(found(&format!("buf={array}")), [array.as_str()]);
    }

    #[test]
    fn base64_inside_hex_is_found() {
        let inner = STANDARD.encode("password token=1");
        let hex = hex::encode(format!("x {inner} y"));
        assert_eq!(found(&hex), [hex.as_str()]);
    }

    #[test]
    fn innocent_encodings_are_left_alone() {
        for text in [
            "call_id=3f2a9c1e-4b5d-4e6f-8a7b-9c0d1e2f3a4b fingerprint AB:CD:EF:01",
            &hex::encode("just some harmless text here"),
            "[1, 2, 3]",
            "[300, 2, 3, 4, 5, 6, 7, 8, 9]",
            "srbridge_errors_total{kind=\"sip_parse\"}",
            "=========",
            "",
        ] {
            assert!(found(text).is_empty(), "{text}");
        }
    }
}
