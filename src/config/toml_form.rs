//! Reader for the native TOML form. Only TOML syntax is checked here; keys and values are
//! validated by the same code as rtx.conf. Spans from `toml::Spanned` give every key a line.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::error::ConfigError;
use super::raw::{RawDoc, RawEntry, RawSection, RawValue};

type SpannedDoc = BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads TOML text into sections; `file` is only used in error messages.
pub(crate) fn parse(file: &Path, text: &str) -> Result<RawDoc, ConfigError> {
    let doc: SpannedDoc = toml::from_str(text).map_err(|e| {
        let message = e.message().replace('\n', "; ");
        let message = if message.contains("expected a map") {
            format!("settings must be inside a [section] ({message})")
        } else {
            message
        };
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(text, span.start)),
            key: None,
            message,
        }
    })?;
    let mut sections: Vec<RawSection> = doc
        .into_iter()
        .map(|(name, entries)| {
            let mut entries: Vec<RawEntry> = entries
                .into_iter()
                .map(|(key, value)| RawEntry {
                    line: line_of(text, key.span().start),
                    key: key.into_inner(),
                    value: RawValue::Toml(value.into_inner()),
                })
                .collect();
            entries.sort_by_key(|e| e.line);
            RawSection {
                line: Some(line_of(text, name.span().start)),
                name: name.into_inner(),
                entries,
            }
        })
        .collect();
    sections.sort_by_key(|s| s.line);
    Ok(RawDoc { sections })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        parse(Path::new("x.toml"), text)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn keys_and_sections_get_their_lines() {
        let doc = parse(
            Path::new("x.toml"),
            "# c\n[global]\nappid = \"a\"\n\n[media]\ncodecs = [\"PCMU\"]\n[media.recording]\nenabled = true\n",
        )
        .expect("parses");
        assert_eq!(doc.sections[0].name, "global");
        assert_eq!(doc.sections[0].line, Some(2));
        assert_eq!(doc.sections[0].entries[0].line, 3);
        let media = doc.section("media").expect("media");
        assert_eq!(media.line, Some(5));
        assert_eq!(media.entries[0].line, 6);
        assert_eq!(media.entries[1].key, "recording");
        assert_eq!(media.entries[1].line, 7);
    }

    #[test]
    fn syntax_error_is_one_line_with_line_number() {
        let e = parse_err("[global]\nappid = \n");
        assert!(e.starts_with("x.toml:2: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let e = parse_err("[global]\nappid = \"a\"\nappid = \"b\"\n");
        assert!(e.starts_with("x.toml:3: "), "{e}");
        assert!(e.contains("duplicate key"), "{e}");
    }

    #[test]
    fn top_level_key_is_an_error() {
        let e = parse_err("appid = \"a\"\n");
        assert!(
            e.starts_with("x.toml:1: settings must be inside a [section]"),
            "{e}"
        );
    }
}
