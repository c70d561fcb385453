//! The uid grammar (docs/protocol.md "User ids"): one visible spelling per user, so nobody can
//! log in as a look-alike of someone else (`"1000 "`, full-width `１０００`, a right-to-left
//! override).
//!
//! A uid is 1-64 characters, already in Unicode NFKC form, made of letters and digits of any
//! script (Unicode Alphabetic/Numeric) and the ASCII marks [`ALLOWED_PUNCTUATION`] (RTM's set,
//! without the space). Control, bidi-control and whitespace characters are named in the error.

use unicode_normalization::UnicodeNormalization;

use super::core::MAX_ID_LEN;

/// ASCII punctuation allowed in a uid (anyRTC/Agora RTM's user-id set minus the space).
pub const ALLOWED_PUNCTUATION: &str = "!#$%&()+-:;<=.>?@[]^_{}|~,";

/// Why a uid is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// Empty, or more than [`MAX_ID_LEN`] characters.
    #[error("uid must be 1-{MAX_ID_LEN} characters (got {0})")]
    Length(usize),
    /// A control character (newline, tab, DEL…).
    #[error("uid contains the control character U+{0:04X}")]
    Control(u32),
    /// A bidirectional-text control, which makes a uid display as another.
    #[error("uid contains the bidi control U+{0:04X}")]
    Bidi(u32),
    /// A space or other whitespace.
    #[error("uid contains whitespace (U+{0:04X})")]
    Whitespace(u32),
    /// Not in NFKC form (full-width digits, ligatures, compatibility characters).
    #[error("uid is not in Unicode NFKC form; use {0:?}")]
    NotNfkc(String),
    /// A character outside the grammar.
    #[error("uid contains {0:?}, which is not a letter, digit or one of {ALLOWED_PUNCTUATION}")]
    Disallowed(char),
}

/// Left-to-right/right-to-left marks, embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Checks `uid` against the grammar.
pub fn check_uid(uid: &str) -> Result<(), UidError> {
    let len = uid.chars().count();
    if len == 0 || len > MAX_ID_LEN {
        return Err(UidError::Length(len));
    }
    for c in uid.chars() {
        if c.is_control() {
            return Err(UidError::Control(c.into()));
        }
        if is_bidi_control(c) {
            return Err(UidError::Bidi(c.into()));
        }
        if c.is_whitespace() {
            return Err(UidError::Whitespace(c.into()));
        }
    }
    let nfkc: String = uid.nfkc().collect();
    if nfkc != uid {
        return Err(UidError::NotNfkc(nfkc));
    }
    match uid
        .chars()
        .find(|&c| !(c.is_alphanumeric() || ALLOWED_PUNCTUATION.contains(c)))
    {
        Some(c) => Err(UidError::Disallowed(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        let longest = "é".repeat(64);
        for uid in [
            "alice",
            "1000",
            "user_42",
            "a.b-c@example.com",
            "Zoë",
            "王小明",
            "Ωmega",
            "x!#$%&()+-:;<=.>?@[]^_{}|~,",
            longest.as_str(),
        ] {
            assert_eq!(check_uid(uid), Ok(()), "{uid:?}");
        }
    }

    #[test]
    fn look_alikes_and_invisible_characters_are_refused() {
        let cases: &[(&str, UidError)] = &[
            ("", UidError::Length(0)),
            (&"x".repeat(65), UidError::Length(65)),
            ("1000 ", UidError::Whitespace(0x20)),
            (" 1000", UidError::Whitespace(0x20)),
            ("al\u{00A0}ice", UidError::Whitespace(0xA0)),
            ("a\u{3000}b", UidError::Whitespace(0x3000)),
            ("１０００", UidError::NotNfkc("1000".into())),
            ("ﬁle", UidError::NotNfkc("file".into())),
            ("e\u{0301}", UidError::NotNfkc("é".into())),
            ("alice\u{202E}", UidError::Bidi(0x202E)),
            ("\u{202A}x", UidError::Bidi(0x202A)),
            ("x\u{2066}", UidError::Bidi(0x2066)),
            ("x\u{2069}", UidError::Bidi(0x2069)),
            ("x\u{200E}", UidError::Bidi(0x200E)),
            ("x\u{200F}", UidError::Bidi(0x200F)),
            ("x\u{061C}", UidError::Bidi(0x061C)),
            ("a\nb", UidError::Control(0x0A)),
            ("tab\there", UidError::Control(0x09)),
            ("\u{7f}", UidError::Control(0x7F)),
            ("zero\u{200B}width", UidError::Disallowed('\u{200B}')),
            ("a b", UidError::Whitespace(0x20)),
            ("quote\"", UidError::Disallowed('"')),
            ("slash/", UidError::Disallowed('/')),
            ("smile🙂", UidError::Disallowed('🙂')),
        ];
        for (uid, want) in cases {
            assert_eq!(check_uid(uid).as_ref(), Err(want), "{uid:?}");
        }
    }

    #[test]
    fn errors_name_the_character() {
        let e = check_uid("alice\u{202E}").unwrap_err().to_string();
        assert!(e.contains("U+202E"), "{e}");
        let e = check_uid("１０００").unwrap_err().to_string();
        assert!(e.contains("\"1000\""), "{e}");
    }
}
