//! Reading a log as an attacker would: every hex and base64 span decoded, so a test can check that
//! a secret appears in no encoding.

/// Every hex (`0x…` or bare) and base64 span of `log`, decoded: what a reader of the log
/// could recover with `xxd -r -p` or `base64 -d`.
pub fn decoded_spans(log: &str) -> String {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::{DecodePaddingMode, Engine};
    let lenient = |alphabet| {
        GeneralPurpose::new(
            alphabet,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        )
    };
    let engines = [
        lenient(&base64::alphabet::STANDARD),
        lenient(&base64::alphabet::URL_SAFE),
    ];
    let mut out = String::new();
    let runs = log.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)));
    for run in runs.filter(|r| r.len() >= 8) {
        let hex_part = run.strip_prefix("0x").unwrap_or(run);
        if hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(bytes) = hex::decode(&hex_part[..hex_part.len() & !1]) {
                out.push_str(&String::from_utf8_lossy(&bytes));
                out.push('\n');
            }
        }
        for piece in run.split('=').filter(|p| p.len() >= 8) {
            let body = &piece[..piece.len() - usize::from(piece.len() % 4 == 1)];
            for engine in &engines {
                if let Ok(bytes) = engine.decode(body) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Panics when `secret` is in `log` as text, hex or base64 (naming `what`, not the secret's value
/// beyond what the test already knows).
#[track_caller]
pub fn assert_no_secret(log: &str, secret: &str, what: &str) {
    let everything = format!("{log}\n{}", decoded_spans(log));
    assert!(
        !everything.contains(secret),
        "{what}: {secret} found in the log"
    );
}
