//! Reader for SRProxy's INI `rtx.conf`, accepted unchanged.
//!
//! Lines are `[section]`, `key=value`, or comments starting with `#` (also `;`). The value
//! ends at the first space or tab, so trailing `## comments` work as in SRProxy; spaces
//! around `=` are tolerated (see [`value_of`]). Section and key names are case-insensitive.
//! A repeated section header continues the section; a key set twice is an error. A line
//! that is none of these, or a key before any section, is an error.

use std::path::Path;

use super::error::ConfigError;
use super::raw::{RawDoc, RawEntry, RawSection, RawValue};

/// Reads rtx.conf text into sections; `file` is only used in error messages.
pub(crate) fn parse(file: &Path, text: &str) -> Result<RawDoc, ConfigError> {
    let err = |line: usize, key: Option<&str>, message: String| ConfigError::Invalid {
        file: file.to_path_buf(),
        line: Some(line),
        key: key.map(str::to_string),
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut doc = RawDoc::default();
    let mut current: Option<usize> = None;

    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw_line.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            let Some((name, after)) = header.split_once(']') else {
                return Err(err(
                    line,
                    None,
                    format!("section header \"{trimmed}\" has no ']'"),
                ));
            };
            let after = after.trim_start_matches([' ', '\t']);
            if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
                return Err(err(
                    line,
                    None,
                    format!("unexpected \"{after}\" after section header [{name}]"),
                ));
            }
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(err(line, None, format!("invalid section name [{name}]")));
            }
            current = Some(match doc.sections.iter().position(|s| s.name == name) {
                Some(existing) => existing,
                None => {
                    doc.sections.push(RawSection {
                        name,
                        line: Some(line),
                        entries: Vec::new(),
                    });
                    doc.sections.len() - 1
                }
            });
            continue;
        }
        let Some((key, rest)) = trimmed.split_once('=') else {
            return Err(err(
                line,
                None,
                format!("\"{trimmed}\" is not key=value, [section] or # comment"),
            ));
        };
        let key = key.trim_matches([' ', '\t']).to_ascii_lowercase();
        if key.is_empty() {
            return Err(err(line, None, "missing key before '='".to_string()));
        }
        if key.contains([' ', '\t', '[', ']']) {
            return Err(err(line, None, format!("invalid key \"{key}\"")));
        }
        let Some(section_index) = current else {
            return Err(err(
                line,
                Some(&key),
                "key=value before any [section]".to_string(),
            ));
        };
        let value = value_of(rest);
        let section = &mut doc.sections[section_index];
        if let Some(first) = section.entries.iter().find(|e| e.key == key) {
            return Err(err(
                line,
                Some(&format!("[{}] {key}", section.name)),
                format!("set twice (first on line {})", first.line),
            ));
        }
        section.entries.push(RawEntry {
            key,
            line,
            value: RawValue::Text(value),
        });
    }
    Ok(doc)
}

/// The value after `=`: up to the first space or tab. `key = value` is tolerated, but after
/// such a space a `#` starts a comment, so `ip=   ## none` is empty as in SRProxy. A value
/// written right after `=` is taken as is, even if it starts with `#` (`sip_pwd=#1`).
fn value_of(rest: &str) -> String {
    let spaced = rest.starts_with([' ', '\t']);
    let value = rest.trim_start_matches([' ', '\t']);
    if spaced && value.starts_with('#') {
        return String::new();
    }
    value.split([' ', '\t']).next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> RawDoc {
        parse(Path::new("rtx.conf"), text).expect("parses")
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("rtx.conf"), text)
            .expect_err("refused")
            .to_string()
    }

    fn value(doc: &RawDoc, section: &str, key: &str) -> String {
        let entry = doc
            .section(section)
            .and_then(|s| s.entries.iter().find(|e| e.key == key))
            .expect("key present");
        match &entry.value {
            RawValue::Text(text) => text.clone(),
            RawValue::Toml(_) => panic!("ini gives text"),
        }
    }

    #[test]
    fn values_end_at_first_space_or_tab() {
        let doc = parse_ok("[global]\nappid=abc ## my app\nsip_svr=1.2.3.4:5060\t# pbx\n");
        assert_eq!(value(&doc, "global", "appid"), "abc");
        assert_eq!(value(&doc, "global", "sip_svr"), "1.2.3.4:5060");
    }

    #[test]
    fn comments_blank_lines_crlf_and_spaces_around_equals() {
        let doc =
            parse_ok("\u{feff}# head\r\n\r\n  ; also comment\r\n[Global]  # x\r\nAppId = abc\r\n");
        assert_eq!(value(&doc, "global", "appid"), "abc");
        assert_eq!(doc.sections[0].line, Some(4));
        assert_eq!(doc.sections[0].entries[0].line, 5);
    }

    #[test]
    fn empty_value_is_kept_as_empty() {
        let doc = parse_ok("[pstn]\nip=\nprefix= # none\n[proxy]\nsip_pwd=#1 ## hash\n");
        assert_eq!(value(&doc, "pstn", "ip"), "");
        assert_eq!(value(&doc, "pstn", "prefix"), "");
        assert_eq!(value(&doc, "proxy", "sip_pwd"), "#1");
    }

    #[test]
    fn repeated_section_continues_it() {
        let doc = parse_ok("[global]\nappid=a\n[log]\nlevel=2\n[global]\nsip_svr=1.2.3.4:5060\n");
        assert_eq!(doc.sections.len(), 2);
        assert_eq!(value(&doc, "global", "sip_svr"), "1.2.3.4:5060");
    }

    #[test]
    fn line_without_equals_is_an_error() {
        assert_eq!(
            parse_err("[global]\nappid\n"),
            "rtx.conf:2: \"appid\" is not key=value, [section] or # comment"
        );
    }

    #[test]
    fn key_outside_section_is_an_error() {
        assert_eq!(
            parse_err("# c\nappid=abc\n"),
            "rtx.conf:2: appid: key=value before any [section]"
        );
    }

    #[test]
    fn unterminated_or_bad_section_header_is_an_error() {
        assert_eq!(
            parse_err("[global\n"),
            "rtx.conf:1: section header \"[global\" has no ']'"
        );
        assert_eq!(parse_err("[]\n"), "rtx.conf:1: invalid section name []");
        assert_eq!(
            parse_err("[global] x\n"),
            "rtx.conf:1: unexpected \"x\" after section header [global]"
        );
    }

    #[test]
    fn empty_or_spaced_key_is_an_error() {
        assert_eq!(
            parse_err("[global]\n=abc\n"),
            "rtx.conf:2: missing key before '='"
        );
        assert_eq!(
            parse_err("[global]\nsip svr=abc\n"),
            "rtx.conf:2: invalid key \"sip svr\""
        );
    }

    #[test]
    fn duplicate_key_is_an_error() {
        assert_eq!(
            parse_err("[global]\nappid=a\n\nappid=b\n"),
            "rtx.conf:4: [global] appid: set twice (first on line 2)"
        );
    }
}
