//! The common shape both file forms are read into before validation: sections of keys, each
//! with the line it came from, so one validator serves both forms and every error has a line.

/// A whole file: sections in file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawDoc {
    pub sections: Vec<RawSection>,
}

/// One `[section]` (for TOML also a nested table such as `media.recording`).
#[derive(Debug, Clone)]
pub(crate) struct RawSection {
    /// Lower-case name without brackets, dotted for nested tables.
    pub name: String,
    /// Line of the header; `None` when there is none (implicit TOML table).
    pub line: Option<usize>,
    pub entries: Vec<RawEntry>,
}

/// One `key = value`.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub key: String,
    pub line: usize,
    pub value: RawValue,
}

/// The value as the form wrote it; the validator converts it to the type the key needs.
#[derive(Debug, Clone)]
pub(crate) enum RawValue {
    /// rtx.conf: text up to the first space or tab.
    Text(String),
    /// TOML: a typed value.
    Toml(toml::Value),
}

impl RawDoc {
    pub fn section(&self, name: &str) -> Option<&RawSection> {
        self.sections.iter().find(|s| s.name == name)
    }
}
