//! Configuration: SRProxy's `rtx.conf` (read unchanged) and the native TOML form, both
//! loaded into one validated [`Config`].
//!
//! Loading either succeeds completely or fails with one [`ConfigError`] naming file, line,
//! key and what is wrong: the bridge never starts half-configured. Settings that were
//! accepted but have no effect are listed in [`Config::warnings`].

mod acc_rule;
mod error;
mod model;
mod raw;
mod rtx_conf;
mod summary;
mod toml_form;
mod validate;

use std::path::Path;

pub use acc_rule::{AccRule, AccRuleError, AccToken};
pub use error::ConfigError;
pub use model::*;

impl Config {
    /// Reads and validates a config file. `*.toml` is the native form; `*.conf`/`*.ini`
    /// (and anything that does not look like TOML) is SRProxy's rtx.conf.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = toml_form::line_of(&String::from_utf8_lossy(e.as_bytes()), offset);
            ConfigError::Invalid {
                file: path.to_path_buf(),
                line: Some(line),
                key: None,
                message: "is not valid UTF-8 text".to_string(),
            }
        })?;
        match detect_form(path, &text) {
            ConfigForm::Toml => Config::from_toml_str(path, &text),
            ConfigForm::RtxConf => Config::from_rtx_conf_str(path, &text),
        }
    }

    /// Validates rtx.conf text; `path` is only used in messages.
    pub fn from_rtx_conf_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc = rtx_conf::parse(path, text)?;
        validate::build(path, ConfigForm::RtxConf, &doc)
    }

    /// Validates native TOML text; `path` is only used in messages.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc = toml_form::parse(path, text)?;
        validate::build(path, ConfigForm::Toml, &doc)
    }
}

/// Picks the form: by extension when it says, otherwise by a TOML-only feature (quoted
/// values or `[[arrays]]`), which rtx.conf never has.
fn detect_form(path: &Path, text: &str) -> ConfigForm {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("toml") => return ConfigForm::Toml,
        Some(ext)
            if ["conf", "ini", "cfg"]
                .iter()
                .any(|c| ext.eq_ignore_ascii_case(c)) =>
        {
            return ConfigForm::RtxConf
        }
        _ => {}
    }
    let looks_like_toml = text.lines().map(str::trim).any(|line| {
        line.starts_with("[[")
            || line
                .split_once('=')
                .is_some_and(|(_, value)| value.trim_start().starts_with(['"', '\'', '[']))
    });
    if looks_like_toml {
        ConfigForm::Toml
    } else {
        ConfigForm::RtxConf
    }
}

#[cfg(test)]
mod tests;
