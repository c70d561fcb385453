//! Turns a [`RawDoc`] from either form into a validated [`Config`].
//!
//! One code path for both forms, so rtx.conf and TOML accept the same values and refuse
//! them with the same messages. Unknown sections/keys are warnings in rtx.conf (files in the
//! wild carry extras) and errors in TOML (a typo in the native form should not pass silently).

use std::cell::RefCell;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::acc_rule::AccRule;
use super::error::ConfigError;
use super::model::*;
use super::raw::{RawDoc, RawEntry, RawSection, RawValue};

/// Sections SRProxy's rtx.conf knows.
const RTX_SECTIONS: &[&str] = &["global", "rtm2sip", "proxy", "pstn", "log", "rtc", "rtm"];
/// Sections only the native form has.
const NATIVE_SECTIONS: &[&str] = &[
    "sip", "media", "http", "auth", "limits", "shutdown", "events", "cluster",
];

/// File-wide context: where errors point and where warnings collect.
struct Ctx<'a> {
    file: &'a Path,
    form: ConfigForm,
    warnings: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    fn error(&self, line: Option<usize>, key: Option<String>, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key,
            message: message.replace(['\n', '\r'], " "),
        }
    }

    fn warn(&self, line: Option<usize>, key: Option<String>, message: String) {
        let text = self.error(line, key, message).to_string();
        self.warnings.borrow_mut().push(text);
    }
}

/// A value plus the line it came from, so later cross-checks can point at it.
struct Located<T> {
    value: T,
    line: usize,
}

/// One section (or nested TOML table) being read; remembers which keys were asked for so
/// leftovers can be reported as unknown.
struct Sec<'c> {
    ctx: &'c Ctx<'c>,
    name: String,
    header_line: Option<usize>,
    entries: Vec<RawEntry>,
    known: RefCell<Vec<&'static str>>,
    /// For entries of a TOML array of tables: "entry 2: ".
    message_prefix: String,
}

type Result<T> = std::result::Result<T, ConfigError>;

fn toml_type(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "string",
        toml::Value::Integer(_) => "integer",
        toml::Value::Float(_) => "float",
        toml::Value::Boolean(_) => "boolean",
        toml::Value::Datetime(_) => "datetime",
        toml::Value::Array(_) => "array",
        toml::Value::Table(_) => "table",
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
        other => format!("{} {other}", toml_type(other)),
    }
}

impl<'c> Sec<'c> {
    fn new(ctx: &'c Ctx<'c>, name: &str, raw: Option<&RawSection>) -> Self {
        Sec {
            ctx,
            name: name.to_string(),
            header_line: raw.and_then(|r| r.line),
            entries: raw.map(|r| r.entries.clone()).unwrap_or_default(),
            known: RefCell::new(Vec::new()),
            message_prefix: String::new(),
        }
    }

    fn key_name(&self, key: &str) -> String {
        format!("[{}] {key}", self.name)
    }

    fn err(&self, line: Option<usize>, key: &str, message: impl Display) -> ConfigError {
        self.ctx.error(
            line,
            Some(self.key_name(key)),
            format!("{}{message}", self.message_prefix),
        )
    }

    fn entry(&self, key: &'static str) -> Option<&RawEntry> {
        self.known.borrow_mut().push(key);
        self.entries.iter().find(|e| e.key == key)
    }

    /// Error for a required key that is absent: points at the condition that requires it,
    /// else at the section header.
    fn missing(&self, key: &str, condition: Option<(&str, usize)>) -> ConfigError {
        match condition {
            Some((why, line)) => self.err(Some(line), key, format!("required when {why}")),
            None if self.header_line.is_some() => self.err(self.header_line, key, "required"),
            None => self.err(
                None,
                key,
                format!("required (the file has no [{}] section)", self.name),
            ),
        }
    }

    fn string_inner(&self, key: &'static str, secret: bool) -> Result<Option<Located<String>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let value = match &entry.value {
            RawValue::Text(text) => text.clone(),
            RawValue::Toml(toml::Value::String(s)) => s.clone(),
            RawValue::Toml(toml::Value::Integer(i)) => i.to_string(),
            RawValue::Toml(other) => {
                let found = if secret {
                    toml_type(other).to_string()
                } else {
                    describe(other)
                };
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!("expected a string, found {found}"),
                ));
            }
        };
        Ok(Some(Located {
            value,
            line: entry.line,
        }))
    }

    /// A string value as written (may be empty).
    fn string(&self, key: &'static str) -> Result<Option<Located<String>>> {
        self.string_inner(key, false)
    }

    /// A string value; empty counts as not set.
    fn optional(&self, key: &'static str) -> Result<Option<Located<String>>> {
        Ok(self.string(key)?.filter(|s| !s.value.is_empty()))
    }

    /// A string that must be present and non-empty.
    fn required(
        &self,
        key: &'static str,
        condition: Option<(&str, usize)>,
    ) -> Result<Located<String>> {
        match self.string(key)? {
            None => Err(self.missing(key, condition)),
            Some(s) if s.value.is_empty() => Err(self.err(Some(s.line), key, "is empty")),
            Some(s) => Ok(s),
        }
    }

    /// A secret: never echoed in messages; empty is an error when set.
    fn secret(&self, key: &'static str) -> Result<Option<Located<Secret>>> {
        match self.string_inner(key, true)? {
            None => Ok(None),
            Some(s) if s.value.is_empty() => Err(self.err(Some(s.line), key, "is empty")),
            Some(s) => Ok(Some(Located {
                value: Secret::new(s.value),
                line: s.line,
            })),
        }
    }

    /// A non-empty string converted by `parse`, whose error text completes the message.
    fn parsed<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<Located<T>>> {
        match self.optional(key)? {
            None => Ok(None),
            Some(s) => match parse(&s.value) {
                Ok(value) => Ok(Some(Located {
                    value,
                    line: s.line,
                })),
                Err(message) => Err(self.err(Some(s.line), key, message)),
            },
        }
    }

    fn bool(&self, key: &'static str) -> Result<Option<Located<bool>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let value = match &entry.value {
            RawValue::Text(text) => match text.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(self.err(
                        Some(entry.line),
                        key,
                        format!("{text:?} is not a boolean (1/0, true/false, yes/no)"),
                    ))
                }
            },
            RawValue::Toml(toml::Value::Boolean(b)) => *b,
            RawValue::Toml(toml::Value::Integer(1)) => true,
            RawValue::Toml(toml::Value::Integer(0)) => false,
            RawValue::Toml(other) => {
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!("expected true or false, found {}", describe(other)),
                ))
            }
        };
        Ok(Some(Located {
            value,
            line: entry.line,
        }))
    }

    fn int(&self, key: &'static str, min: i64, max: i64) -> Result<Option<Located<i64>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let value = match &entry.value {
            RawValue::Text(text) => text.parse::<i64>().map_err(|_| {
                self.err(
                    Some(entry.line),
                    key,
                    format!("{text:?} is not a whole number"),
                )
            })?,
            RawValue::Toml(toml::Value::Integer(i)) => *i,
            RawValue::Toml(other) => {
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!("expected a whole number, found {}", describe(other)),
                ))
            }
        };
        if !(min..=max).contains(&value) {
            return Err(self.err(
                Some(entry.line),
                key,
                format!("{value} is out of range ({min}-{max})"),
            ));
        }
        Ok(Some(Located {
            value,
            line: entry.line,
        }))
    }

    fn port(&self, key: &'static str, default: u16) -> Result<u16> {
        Ok(self.int(key, 0, 65535)?.map_or(default, |p| p.value as u16))
    }

    fn seconds(&self, key: &'static str, min: i64, max: i64, default: u64) -> Result<Duration> {
        Ok(Duration::from_secs(
            self.int(key, min, max)?.map_or(default, |v| v.value as u64),
        ))
    }

    fn count(&self, key: &'static str, max: i64, default: u32) -> Result<u32> {
        Ok(self.int(key, 1, max)?.map_or(default, |v| v.value as u32))
    }

    /// A list of strings (TOML array; in rtx.conf a comma-separated value).
    fn list(&self, key: &'static str) -> Result<Option<Located<Vec<String>>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        let value = match &entry.value {
            RawValue::Text(text) => text
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            RawValue::Toml(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => {
                            return Err(self.err(
                                Some(entry.line),
                                key,
                                format!(
                                    "item {}: expected a string, found {}",
                                    i + 1,
                                    describe(other)
                                ),
                            ))
                        }
                    }
                }
                out
            }
            RawValue::Toml(other) => {
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!("expected an array of strings, found {}", describe(other)),
                ))
            }
        };
        Ok(Some(Located {
            value,
            line: entry.line,
        }))
    }

    /// Each element of `list` converted by `parse`; errors name the item.
    fn parsed_list<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<Located<Vec<T>>>> {
        let Some(list) = self.list(key)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (i, item) in list.value.iter().enumerate() {
            out.push(
                parse(item)
                    .map_err(|m| self.err(Some(list.line), key, format!("item {}: {m}", i + 1)))?,
            );
        }
        Ok(Some(Located {
            value: out,
            line: list.line,
        }))
    }

    fn nested(&self, key: &str, line: usize, table: &toml::Table, prefix: String) -> Sec<'c> {
        Sec {
            ctx: self.ctx,
            name: format!("{}.{key}", self.name),
            header_line: Some(line),
            entries: table
                .iter()
                .map(|(k, v)| RawEntry {
                    key: k.clone(),
                    line,
                    value: RawValue::Toml(v.clone()),
                })
                .collect(),
            known: RefCell::new(Vec::new()),
            message_prefix: prefix,
        }
    }

    /// A nested TOML table such as `[media.recording]`.
    fn table(&self, key: &'static str) -> Result<Option<Sec<'c>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        match &entry.value {
            RawValue::Toml(toml::Value::Table(table)) => {
                Ok(Some(self.nested(key, entry.line, table, String::new())))
            }
            RawValue::Toml(other) => Err(self.err(
                Some(entry.line),
                key,
                format!("expected a table, found {}", describe(other)),
            )),
            RawValue::Text(_) => Err(self.err(Some(entry.line), key, "needs the TOML config form")),
        }
    }

    /// A TOML array of tables such as `[[media.turn]]`.
    fn tables(&self, key: &'static str) -> Result<Vec<Sec<'c>>> {
        let Some(entry) = self.entry(key) else {
            return Ok(Vec::new());
        };
        let items = match &entry.value {
            RawValue::Toml(toml::Value::Array(items)) => items,
            RawValue::Toml(other) => {
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!("expected an array of tables, found {}", describe(other)),
                ))
            }
            RawValue::Text(_) => {
                return Err(self.err(Some(entry.line), key, "needs the TOML config form"))
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let toml::Value::Table(table) = item else {
                return Err(self.err(
                    Some(entry.line),
                    key,
                    format!(
                        "entry {}: expected a table, found {}",
                        i + 1,
                        describe(item)
                    ),
                ));
            };
            out.push(self.nested(key, entry.line, table, format!("entry {}: ", i + 1)));
        }
        Ok(out)
    }

    /// Reports keys nobody asked for: warnings in rtx.conf, errors in TOML.
    fn finish(&self) -> Result<()> {
        let known = self.known.borrow();
        for entry in &self.entries {
            if known.contains(&entry.key.as_str()) {
                continue;
            }
            match self.ctx.form {
                ConfigForm::RtxConf => self.ctx.warn(
                    Some(entry.line),
                    Some(self.key_name(&entry.key)),
                    "unknown key, ignored".to_string(),
                ),
                ConfigForm::Toml => {
                    return Err(self.err(
                        Some(entry.line),
                        &entry.key,
                        format!("unknown key (known keys: {})", known.join(", ")),
                    ))
                }
            }
        }
        Ok(())
    }
}

// ---- value parsers: each returns the end of a message that follows "[section] key: " ----

fn parse_port(text: &str, whole: &str) -> std::result::Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{whole:?}: port {text:?} is not a number 1-65535")),
    }
}

fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && !text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `IP:port`, `[v6]:port` or `host:port`; with `default_port`, the port may be left out.
pub(crate) fn parse_host_port(
    text: &str,
    default_port: Option<u16>,
) -> std::result::Result<HostPort, String> {
    let shape = if default_port.is_some() {
        "IP, IP:port or host:port"
    } else {
        "IP:port or host:port"
    };
    let bad = || format!("{text:?} is not {shape}");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{text:?}: port 0 is not a usable port"));
        }
        return Ok(HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return match default_port {
            Some(port) => Ok(HostPort {
                host: Host::Ip(ip),
                port,
            }),
            None => Err(bad()),
        };
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if let (Ok(ip), Some(port)) = (inner.parse::<IpAddr>(), default_port) {
            return Ok(HostPort {
                host: Host::Ip(ip),
                port,
            });
        }
        return Err(bad());
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(parse_port(port, text)?)),
        None => (text, default_port),
    };
    if host.parse::<IpAddr>().is_ok() {
        // Unreachable for valid v4 (SocketAddr parsed above) but keeps v6 honest.
        return Err(bad());
    }
    if !is_hostname(host) {
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{text:?}: {host:?} is not a valid IP address"));
        }
        return Err(bad());
    }
    match port {
        Some(port) => Ok(HostPort {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        }),
        None => Err(bad()),
    }
}

fn parse_ip(text: &str) -> std::result::Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

fn parse_public_ip(text: &str) -> std::result::Result<IpAddr, String> {
    let ip = parse_ip(text)?;
    if ip.is_unspecified() {
        return Err(format!(
            "{text:?} cannot be advertised to peers (give the address they should reach)"
        ));
    }
    Ok(ip)
}

fn parse_socket_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not IP:port"))
}

/// Characters RFC 3261 allows in a SIP user part (unreserved + user-unreserved).
fn is_sip_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/#".contains(c)
}

fn parse_sip_user(text: &str) -> std::result::Result<String, String> {
    match text.chars().find(|c| !is_sip_user_char(*c)) {
        Some(bad) => Err(format!(
            "{text:?} contains '{bad}', not allowed in a SIP user name"
        )),
        None => Ok(text.to_string()),
    }
}

/// A SIP header name (RFC 3261 `token`), e.g. `X-Number`.
fn parse_header_name(text: &str) -> std::result::Result<String, String> {
    let name = text.trim();
    if name.is_empty() {
        return Err("is empty (give a header name such as \"X-Number\")".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(*c)))
    {
        return Err(format!(
            "{name:?} contains '{}', not allowed in a SIP header name",
            bad.escape_default()
        ));
    }
    if name.len() > 64 {
        return Err(format!("is {} characters long (at most 64)", name.len()));
    }
    Ok(name.to_string())
}

/// A User-Agent/Server value: 1-128 printable ASCII characters (it goes into every message).
fn parse_user_agent(text: &str) -> std::result::Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".to_string());
    }
    if text.len() > 128 {
        return Err(format!("is {} characters long (at most 128)", text.len()));
    }
    match text.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        Some(bad) => Err(format!("contains {bad:?}: only printable ASCII is allowed")),
        None => Ok(text.to_string()),
    }
}

fn parse_name(text: &str) -> std::result::Result<String, String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?} contains whitespace or control characters"
        ));
    }
    if text.len() > 128 {
        return Err(format!("is {} characters long (at most 128)", text.len()));
    }
    Ok(text.to_string())
}

fn parse_acc_rule(text: &str) -> std::result::Result<AccRule, String> {
    text.parse::<AccRule>().map_err(|e| e.to_string())
}

fn parse_codec(text: &str) -> std::result::Result<Codec, String> {
    Codec::from_name(text).ok_or_else(|| format!("{text:?} is not a supported codec (PCMU, PCMA)"))
}

fn parse_url(
    schemes: &'static [&'static str],
) -> impl Fn(&str) -> std::result::Result<String, String> {
    move |text: &str| {
        let rest = schemes.iter().find_map(|s| text.strip_prefix(s));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
                Ok(text.to_string())
            }
            _ => Err(format!("{text:?} is not a {} URL", schemes.join(" or "))),
        }
    }
}

fn codec_list(sec: &Sec, key: &'static str) -> Result<Option<Located<Vec<Codec>>>> {
    let Some(list) = sec.parsed_list(key, parse_codec)? else {
        return Ok(None);
    };
    if list.value.is_empty() {
        return Err(sec.err(Some(list.line), key, "is empty (list at least one codec)"));
    }
    for (i, codec) in list.value.iter().enumerate() {
        if list.value[..i].contains(codec) {
            return Err(sec.err(Some(list.line), key, format!("{codec} is listed twice")));
        }
    }
    Ok(Some(list))
}

// ---- sections ----

/// `[global]`; `sip_svr` may be left out in TOML when `[[sip.pbx]]` lists the PBXs (checked by
/// [`build`]).
fn global(s: &Sec) -> Result<GlobalKeys> {
    let appid = s.required("appid", None)?;
    let appid = parse_name(&appid.value).map_err(|m| s.err(Some(appid.line), "appid", m))?;
    let sip_svr = match s.parsed("sip_svr", parse_pbx_list)? {
        Some(list) => Some(list),
        None => match s.string("sip_svr")? {
            // distinguish "absent" from "empty" for a precise message
            Some(empty) => {
                return Err(s.err(
                    Some(empty.line),
                    "sip_svr",
                    "is empty (give IP:port of the PBX)",
                ))
            }
            None => None,
        },
    };
    let sip_local_port = s.port("sip_local_port", 5086)?;
    s.finish()?;
    Ok(GlobalKeys {
        appid,
        sip_svr,
        sip_local_port,
    })
}

/// `[global]` as read, before `sip_svr` and `[[sip.pbx]]` are reconciled.
struct GlobalKeys {
    appid: String,
    sip_svr: Option<Located<PbxList>>,
    sip_local_port: u16,
}

/// `host:port[;weight=N][;priority=P]`: one PBX of `sip_svr`.
fn parse_pbx_entry(text: &str) -> std::result::Result<PbxEntry, String> {
    let mut parts = text.split(';');
    let addr = parse_host_port(parts.next().unwrap_or_default().trim(), None)?;
    let mut entry = PbxEntry::new(addr);
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: {param:?} is not weight=N or priority=N"))?;
        let name = name.trim().to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(format!("{text:?}: {name} is given twice"));
        }
        let number = |range: std::ops::RangeInclusive<u32>| {
            value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    format!(
                        "{text:?}: {name}={value} is not a number {}-{}",
                        range.start(),
                        range.end()
                    )
                })
        };
        match name.as_str() {
            "weight" => entry.weight = number(1..=1000)?,
            "priority" => entry.priority = number(0..=1000)?,
            _ => {
                return Err(format!(
                    "{text:?}: unknown parameter {name:?} (weight, priority)"
                ))
            }
        }
        seen.push(name);
    }
    Ok(entry)
}

/// A comma-separated `sip_svr` list (one entry is the classic single PBX).
fn parse_pbx_list(text: &str) -> std::result::Result<PbxList, String> {
    let items: Vec<&str> = text.split(',').collect();
    let mut entries = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let entry = if item.trim().is_empty() {
            Err("is empty (a comma too many?)".to_string())
        } else {
            parse_pbx_entry(item.trim())
        };
        let entry = entry.map_err(|m| {
            if items.len() > 1 {
                format!("item {}: {m}", i + 1)
            } else {
                m
            }
        })?;
        entries.push(entry);
    }
    PbxList::new(entries)
}

/// `[[sip.pbx]]`: `addr`, `weight`, `priority` per table.
fn sip_pbx_tables(s: &Sec) -> Result<Option<Located<PbxList>>> {
    let line = s.entries.iter().find(|e| e.key == "pbx").map(|e| e.line);
    let tables = s.tables("pbx")?;
    let Some(line) = line else {
        return Ok(None);
    };
    let mut entries = Vec::new();
    for table in &tables {
        let addr = table
            .parsed("addr", |t| parse_host_port(t, None))?
            .ok_or_else(|| table.missing("addr", None))?
            .value;
        let weight = table
            .int("weight", 1, 1000)?
            .map_or(PbxEntry::DEFAULT_WEIGHT, |v| v.value as u32);
        let priority = table
            .int("priority", 0, 1000)?
            .map_or(PbxEntry::DEFAULT_PRIORITY, |v| v.value as u32);
        table.finish()?;
        entries.push(PbxEntry {
            addr,
            weight,
            priority,
        });
    }
    let list = PbxList::new(entries).map_err(|m| s.err(Some(line), "pbx", m))?;
    Ok(Some(Located { value: list, line }))
}

fn rtm2sip(s: &Sec) -> Result<Option<Rtm2SipConfig>> {
    let on = s.bool("on")?;
    let rule = s.string("acc_rule")?;
    let parsed = match &rule {
        Some(r) if !r.value.is_empty() => {
            Some(parse_acc_rule(&r.value).map_err(|m| s.err(Some(r.line), "acc_rule", m))?)
        }
        _ => None,
    };
    s.finish()?;
    let Some(on) = on.filter(|on| on.value) else {
        return Ok(None);
    };
    match (rule, parsed) {
        (Some(_), Some(acc_rule)) if !acc_rule.is_empty() => Ok(Some(Rtm2SipConfig { acc_rule })),
        (Some(r), _) => Err(s.err(
            Some(r.line),
            "acc_rule",
            "is empty (with [rtm2sip] on=1 it must list the numbers browsers may call)",
        )),
        (None, _) => Err(s.missing("acc_rule", Some(("[rtm2sip] on=1", on.line)))),
    }
}

fn proxy(s: &Sec) -> Result<Option<ProxyConfig>> {
    let on = s.bool("on")?;
    let Some(on) = on.filter(|on| on.value) else {
        // Off: the account is not used; accept whatever is there without checking it.
        for key in ["sip_account", "sip_pwd", "rtm_account"] {
            s.entry(key);
        }
        s.finish()?;
        return Ok(None);
    };
    let when = Some(("[proxy] on=1", on.line));
    let account = s.required("sip_account", when)?;
    let sip_account =
        parse_sip_user(&account.value).map_err(|m| s.err(Some(account.line), "sip_account", m))?;
    let sip_pwd = s
        .secret("sip_pwd")?
        .ok_or_else(|| s.missing("sip_pwd", when))?
        .value;
    let rtm = s.required("rtm_account", when)?;
    let rtm_account =
        parse_name(&rtm.value).map_err(|m| s.err(Some(rtm.line), "rtm_account", m))?;
    s.finish()?;
    Ok(Some(ProxyConfig {
        sip_account,
        sip_pwd,
        rtm_account,
    }))
}

fn pstn(s: &Sec) -> Result<Option<PstnConfig>> {
    let addr = s.parsed("ip", |t| parse_host_port(t, Some(5060)))?;
    let prefix = s.parsed("prefix", parse_sip_user)?;
    s.finish()?;
    match (addr, prefix) {
        (Some(addr), prefix) => Ok(Some(PstnConfig {
            addr: addr.value,
            prefix: prefix.map(|p| p.value).unwrap_or_default(),
        })),
        (None, Some(prefix)) => Err(s.err(
            Some(prefix.line),
            "prefix",
            "is set but [pstn] ip is not (give the gateway address)",
        )),
        (None, None) => Ok(None),
    }
}

fn log(s: &Sec) -> Result<LogConfig> {
    let defaults = LogConfig::default();
    let level = s
        .parsed("level", |t| {
            t.parse::<i64>()
                .ok()
                .and_then(LogLevel::from_number)
                .or_else(|| LogLevel::from_name(t))
                .ok_or_else(|| {
                    format!(
                        "{t:?} is not a log level (0 SENSITIVE, 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 NONE)"
                    )
                })
        })?
        .map_or(defaults.level, |l| l.value);
    let file = s.optional("file")?.map(|f| PathBuf::from(f.value));
    let max_file_size_mb = s
        .int("max_file_size", 0, 1_048_576)?
        .map_or(defaults.max_file_size_mb, |v| v.value as u64);
    let max_files = s
        .int("max_files", 1, 1000)?
        .map_or(defaults.max_files, |v| v.value as usize);
    s.finish()?;
    Ok(LogConfig {
        level,
        file,
        max_file_size_mb,
        max_files,
    })
}

fn ignored_cloud_section(ctx: &Ctx, raw: &RawSection) {
    let keys: Vec<&str> = raw.entries.iter().map(|e| e.key.as_str()).collect();
    let listed = if keys.is_empty() {
        String::new()
    } else {
        format!(" ({})", keys.join(", "))
    };
    ctx.warn(
        raw.line,
        Some(format!("[{}]", raw.name)),
        format!("anyRTC private-cloud settings{listed} are not needed by srbridge; ignored"),
    );
}

fn sip(s: &Sec) -> Result<(SipConfig, Option<Located<PbxList>>)> {
    let d = SipConfig::default();
    let pbx = sip_pbx_tables(s)?;
    let listen_ip = s
        .parsed("listen_ip", parse_ip)?
        .map_or(d.listen_ip, |v| v.value);
    let transport = s
        .parsed("transport", |t| match t.to_ascii_lowercase().as_str() {
            "udp" => Ok(SipTransport::Udp),
            "tcp" => Ok(SipTransport::Tcp),
            _ => Err(format!("{t:?} is not udp or tcp")),
        })?
        .map_or(d.transport, |v| v.value);
    let public_ip = s.parsed("public_ip", parse_public_ip)?.map(|v| v.value);
    let register_expires = s.seconds("register_expires", 10, 86400, 300)?;
    let options_interval = s.seconds("options_interval", 0, 3600, 30)?;
    let pbx_down_after = s.count("pbx_down_after", 100, d.pbx_down_after)?;
    let pbx_up_after = s.count("pbx_up_after", 100, d.pbx_up_after)?;
    let register_mode = s
        .parsed("register", |t| match t.to_ascii_lowercase().as_str() {
            "all" => Ok(RegisterMode::All),
            "active_backup" => Ok(RegisterMode::ActiveBackup),
            _ => Err(format!("{t:?} is not all or active_backup")),
        })?
        .map_or(d.register_mode, |v| v.value);
    let dial_prefix = match s.string("dial_prefix")? {
        Some(p) => parse_sip_user(&p.value).map_err(|m| s.err(Some(p.line), "dial_prefix", m))?,
        None => d.dial_prefix,
    };
    let target_header = match s.string("target_header")? {
        Some(h) => {
            parse_header_name(&h.value).map_err(|m| s.err(Some(h.line), "target_header", m))?
        }
        None => d.target_header,
    };
    let ring_timeout = s.seconds("ring_timeout", 1, 3600, 60)?;
    let allowed_peers = s
        .parsed_list("allowed_peers", parse_ip)?
        .map_or_else(Vec::new, |v| v.value);
    let user_agent = match s.string("user_agent")? {
        Some(v) => parse_user_agent(&v.value).map_err(|m| s.err(Some(v.line), "user_agent", m))?,
        None => d.user_agent,
    };
    let tcp_idle_timeout = s.seconds("tcp_idle_timeout", 5, 86400, 300)?;
    let tcp_first_message_timeout = s.seconds("tcp_first_message_timeout", 1, 300, 10)?;
    let tcp_max_per_ip = s.count("tcp_max_per_ip", 10_000, d.tcp_max_per_ip)?;
    let min_se = s.seconds("min_se", 1, 86400, 90)?;
    let session_expires = match s.int("session_expires", 0, 86400)? {
        Some(v) if v.value != 0 && (v.value as u64) < min_se.as_secs() => {
            return Err(s.err(
                Some(v.line),
                "session_expires",
                format!(
                    "{} is below min_se ({} s); 0 turns session timers off",
                    v.value,
                    min_se.as_secs()
                ),
            ))
        }
        Some(v) => Duration::from_secs(v.value as u64),
        None => d.session_expires.max(min_se),
    };
    s.finish()?;
    let config = SipConfig {
        listen_ip,
        transport,
        public_ip,
        register_expires,
        options_interval,
        pbx_down_after,
        pbx_up_after,
        register_mode,
        dial_prefix,
        target_header,
        ring_timeout,
        allowed_peers,
        user_agent,
        tcp_idle_timeout,
        tcp_first_message_timeout,
        tcp_max_per_ip,
        session_expires,
        min_se,
    };
    Ok((config, pbx))
}

fn media(s: &Sec) -> Result<MediaConfig> {
    let d = MediaConfig::default();
    let min = s.int("rtp_port_min", 1024, 65534)?;
    let max = s.int("rtp_port_max", 1025, 65535)?;
    let rtp_port_min = min.as_ref().map_or(d.rtp_port_min, |v| v.value as u16);
    let rtp_port_max = max.as_ref().map_or(d.rtp_port_max, |v| v.value as u16);
    if rtp_port_min % 2 == 1 {
        return Err(s.err(
            min.map(|m| m.line),
            "rtp_port_min",
            format!("{rtp_port_min} is odd (RTP takes an even port, RTCP the next one)"),
        ));
    }
    if rtp_port_max <= rtp_port_min {
        let (line, key) = match (&max, &min) {
            (Some(m), _) => (Some(m.line), "rtp_port_max"),
            (None, m) => (m.as_ref().map(|m| m.line), "rtp_port_min"),
        };
        return Err(s.err(
            line,
            key,
            format!("range {rtp_port_min}-{rtp_port_max} is empty (rtp_port_max must be greater than rtp_port_min)"),
        ));
    }
    let webrtc_port_range = webrtc_ports(s, (rtp_port_min, rtp_port_max))?;
    let webrtc_single_port =
        webrtc_single_port(s, (rtp_port_min, rtp_port_max), webrtc_port_range)?;
    let public_ip = s.parsed("public_ip", parse_public_ip)?.map(|v| v.value);
    let codecs = codec_list(s, "codecs")?.map_or(d.codecs, |v| v.value);
    let mut codec_rules = Vec::new();
    for rule in s.tables("codec_rules")? {
        let numbers = rule.required("numbers", None)?;
        let numbers = parse_acc_rule(&numbers.value)
            .map_err(|m| rule.err(Some(numbers.line), "numbers", m))?;
        let rule_codecs = codec_list(&rule, "codecs")?
            .ok_or_else(|| rule.missing("codecs", None))?
            .value;
        rule.finish()?;
        codec_rules.push(CodecRule {
            numbers,
            codecs: rule_codecs,
        });
    }
    let stun_servers = s
        .parsed_list("stun_servers", parse_url(&["stun:", "stuns:"]))?
        .map_or_else(Vec::new, |v| v.value);
    let mut turn = Vec::new();
    for server in s.tables("turn")? {
        let url = server
            .parsed("url", parse_url(&["turn:", "turns:"]))?
            .ok_or_else(|| server.missing("url", None))?
            .value;
        let username = server.required("username", None)?.value;
        let credential = server
            .secret("credential")?
            .ok_or_else(|| server.missing("credential", None))?
            .value;
        server.finish()?;
        turn.push(TurnServer {
            url,
            username,
            credential,
        });
    }
    let recording = match s.table("recording")? {
        None => d.recording,
        Some(r) => {
            let rd = RecordingConfig::default();
            let enabled = r.bool("enabled")?.is_some_and(|v| v.value);
            let dir = match r.string("dir")? {
                Some(dir) if dir.value.is_empty() => {
                    return Err(r.err(Some(dir.line), "dir", "is empty"))
                }
                Some(dir) => PathBuf::from(dir.value),
                None => rd.dir,
            };
            let mode = r
                .parsed("mode", |t| match t.to_ascii_lowercase().as_str() {
                    "mixed" => Ok(RecordingMode::Mixed),
                    "stereo" => Ok(RecordingMode::Stereo),
                    _ => Err(format!("{t:?} is not mixed or stereo")),
                })?
                .map_or(rd.mode, |v| v.value);
            r.finish()?;
            RecordingConfig { enabled, dir, mode }
        }
    };
    let dtmf_mode = s
        .parsed("dtmf_mode", |t| match t.to_ascii_lowercase().as_str() {
            "rfc4733" | "rfc2833" => Ok(DtmfMode::Rfc4733),
            "info" => Ok(DtmfMode::Info),
            _ => Err(format!("{t:?} is not rfc4733 or info")),
        })?
        .map_or(d.dtmf_mode, |v| v.value);
    let rtp_timeout = s.seconds("rtp_timeout", 0, 86400, 60)?;
    let rtp_hold_timeout = s.seconds("rtp_hold_timeout", 0, 86400, 3600)?;
    let opus = opus_settings(s)?;
    let opus_narrowband = s
        .bool("opus_narrowband")?
        .map_or(d.opus_narrowband, |v| v.value);
    let (lo, hi) = OPUS_BITRATE_RANGE;
    // 0: the browser's own default.
    let opus_receive_bitrate = match s.int("opus_receive_bitrate", 0, hi)? {
        None => d.opus_receive_bitrate,
        Some(v) if v.value == 0 => None,
        Some(v) if v.value < lo => {
            return Err(s.err(
                Some(v.line),
                "opus_receive_bitrate",
                format!("{} is out of range (0 or {lo}-{hi})", v.value),
            ))
        }
        Some(v) => Some(v.value as u32),
    };
    let busy_cpu_percent = s
        .int("busy_cpu_percent", 0, 100)?
        .map_or(d.busy_cpu_percent, |v| v.value as u8);
    s.finish()?;
    Ok(MediaConfig {
        rtp_port_min,
        rtp_port_max,
        webrtc_port_range,
        webrtc_single_port,
        public_ip,
        codecs,
        codec_rules,
        stun_servers,
        turn,
        recording,
        dtmf_mode,
        rtp_timeout,
        rtp_hold_timeout,
        opus,
        opus_narrowband,
        opus_receive_bitrate,
        busy_cpu_percent,
    })
}

/// Lowest and highest Opus bitrates taken: below 6 kb/s narrowband speech breaks up, above
/// 64 kb/s an 8 kHz source gains nothing.
const OPUS_BITRATE_RANGE: (i64, i64) = (6_000, 64_000);

/// `[media] opus_complexity`, `opus_complexity_busy`, `opus_bitrate`, `opus_bitrate_lossy`,
/// `opus_fec`, `opus_mode`, `opus_mode_busy`.
fn opus_settings(s: &Sec) -> Result<OpusSettings> {
    let d = OpusSettings::default();
    let (lo, hi) = OPUS_BITRATE_RANGE;
    let complexity = s
        .int("opus_complexity", 0, 10)?
        .map_or(d.complexity, |v| v.value as u8);
    // Never above opus_complexity: busy means cheaper, not dearer.
    let complexity_busy = s
        .int("opus_complexity_busy", 0, 10)?
        .map_or(d.complexity_busy, |v| v.value as u8)
        .min(complexity);
    let bitrate = s
        .int("opus_bitrate", lo, hi)?
        .map_or(d.bitrate, |v| v.value as u32);
    let lossy = s.int("opus_bitrate_lossy", lo, hi)?;
    let bitrate_lossy = lossy
        .as_ref()
        .map_or(d.bitrate_lossy.max(bitrate), |v| v.value as u32);
    if bitrate_lossy < bitrate {
        return Err(s.err(
            lossy.map(|v| v.line),
            "opus_bitrate_lossy",
            format!(
                "{bitrate_lossy} is below opus_bitrate ({bitrate}): FEC needs bits on top of the clean stream"
            ),
        ));
    }
    let fec = s
        .parsed("opus_fec", |t| match t.to_ascii_lowercase().as_str() {
            "auto" => Ok(OpusFec::Auto),
            "on" => Ok(OpusFec::On),
            "off" => Ok(OpusFec::Off),
            _ => Err(format!("{t:?} is not auto, on or off")),
        })?
        .map_or(d.fec, |v| v.value);
    let mode = |key: &'static str, default: OpusMode| {
        s.parsed(key, |t| match t.to_ascii_lowercase().as_str() {
            "silk" => Ok(OpusMode::Silk),
            "celt" => Ok(OpusMode::Celt),
            _ => Err(format!("{t:?} is not silk or celt")),
        })
        .map(|v| v.map_or(default, |v| v.value))
    };
    Ok(OpusSettings {
        complexity,
        complexity_busy,
        bitrate,
        bitrate_lossy,
        fec,
        mode: mode("opus_mode", d.mode)?,
        mode_busy: mode("opus_mode_busy", d.mode_busy)?,
    })
}

/// `[media] webrtc_port_min/max`: both or neither, holding an even/odd pair (a browser leg holds
/// a pair and uses its even port), apart from the RTP range (the two allocators would collide).
fn webrtc_ports(s: &Sec, (rtp_min, rtp_max): (u16, u16)) -> Result<Option<(u16, u16)>> {
    let min = s.int("webrtc_port_min", 1024, 65534)?;
    let max = s.int("webrtc_port_max", 1025, 65535)?;
    let (min, max) = match (min, max) {
        (None, None) => return Ok(None),
        (Some(min), Some(max)) => (min, max),
        (Some(min), None) => {
            return Err(s.err(
                Some(min.line),
                "webrtc_port_min",
                "is set without [media] webrtc_port_max (give both or neither)",
            ))
        }
        (None, Some(max)) => {
            return Err(s.err(
                Some(max.line),
                "webrtc_port_max",
                "is set without [media] webrtc_port_min (give both or neither)",
            ))
        }
    };
    let (lo, hi) = (min.value as u16, max.value as u16);
    let first_even = u32::from(lo) + u32::from(lo) % 2;
    if first_even + 1 > u32::from(hi) {
        return Err(s.err(
            Some(max.line),
            "webrtc_port_max",
            format!("range {lo}-{hi} holds no even/odd port pair (each browser call holds one)"),
        ));
    }
    if lo <= rtp_max && rtp_min <= hi {
        return Err(s.err(
            Some(min.line),
            "webrtc_port_min",
            format!(
                "range {lo}-{hi} overlaps the RTP range {rtp_min}-{rtp_max} (leave webrtc_port_min/max out to share the RTP range)"
            ),
        ));
    }
    Ok(Some((lo, hi)))
}

/// `[media] webrtc_single_port`: outside the RTP range and any WebRTC range, whose allocators
/// would otherwise hand the same port to a call.
fn webrtc_single_port(
    s: &Sec,
    (rtp_min, rtp_max): (u16, u16),
    webrtc_range: Option<(u16, u16)>,
) -> Result<Option<u16>> {
    let Some(port) = s.int("webrtc_single_port", 1024, 65535)? else {
        return Ok(None);
    };
    let value = port.value as u16;
    if (rtp_min..=rtp_max).contains(&value) {
        return Err(s.err(
            Some(port.line),
            "webrtc_single_port",
            format!("{value} is inside the RTP range {rtp_min}-{rtp_max} (pick a port outside it)"),
        ));
    }
    if let Some((lo, hi)) = webrtc_range.filter(|(lo, hi)| (*lo..=*hi).contains(&value)) {
        return Err(s.err(
            Some(port.line),
            "webrtc_single_port",
            format!("{value} is inside webrtc_port_min/max {lo}-{hi} (pick a port outside it)"),
        ));
    }
    Ok(Some(value))
}

fn existing_file(text: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{text:?} is not a readable file"))
    }
}

fn http(s: &Sec) -> Result<HttpConfig> {
    let d = HttpConfig::default();
    let listen = s
        .parsed("listen", parse_socket_addr)?
        .map_or(d.listen, |v| v.value);
    let cert = s.parsed("tls_cert", existing_file)?;
    let key = s.parsed("tls_key", existing_file)?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert: cert.value,
            key: key.value,
        }),
        (Some(cert), None) => {
            return Err(s.err(
                Some(cert.line),
                "tls_cert",
                "is set without [http] tls_key (give both or neither)",
            ))
        }
        (None, Some(key)) => {
            return Err(s.err(
                Some(key.line),
                "tls_key",
                "is set without [http] tls_cert (give both or neither)",
            ))
        }
        (None, None) => None,
    };
    let admin_token = s.secret("admin_token")?.map(|t| t.value);
    let status_listen = s.parsed("status_listen", parse_socket_addr)?;
    if let Some(status) = &status_listen {
        if status.value == listen && listen.port() != 0 {
            return Err(s.err(
                Some(status.line),
                "status_listen",
                format!("{} is the same as [http] listen", status.value),
            ));
        }
    }
    let header_timeout = s.seconds("header_timeout", 1, 3600, d.header_timeout.as_secs())?;
    let login_timeout = s.seconds("login_timeout", 1, 3600, d.login_timeout.as_secs())?;
    let allowed_origins = s
        .parsed_list(
            "allowed_origins",
            crate::signal::origin::parse_allowed_origin,
        )?
        .map_or(d.allowed_origins, |v| v.value);
    s.finish()?;
    Ok(HttpConfig {
        listen,
        tls,
        admin_token,
        status_listen: status_listen.map(|v| v.value),
        header_timeout,
        login_timeout,
        allowed_origins,
    })
}

fn auth(s: &Sec) -> Result<AuthConfig> {
    let d = AuthConfig::default();
    let token_secret = s.secret("token_secret")?.map(|t| t.value);
    // Up to ten years; the default is a day.
    let max_token_ttl = s.seconds(
        "max_token_ttl",
        1,
        10 * 366 * 86400,
        d.max_token_ttl.as_secs(),
    )?;
    s.finish()?;
    Ok(AuthConfig {
        token_secret,
        max_token_ttl,
    })
}

fn limits(s: &Sec) -> Result<LimitsConfig> {
    let d = LimitsConfig::default();
    let max_calls = s.count("max_calls", 1_000_000, d.max_calls)?;
    let max_setups_per_sec = s.count("max_setups_per_sec", 100_000, d.max_setups_per_sec)?;
    let max_ws_sessions = s.count("max_ws_sessions", 1_000_000, d.max_ws_sessions)?;
    let max_conns_per_ip = s.count("max_conns_per_ip", 1_000_000, d.max_conns_per_ip)?;
    let fd_reserve = s
        .int("fd_reserve", 0, 100_000_000)?
        .and_then(|v| u64::try_from(v.value).ok());
    s.finish()?;
    Ok(LimitsConfig {
        max_calls,
        max_setups_per_sec,
        max_ws_sessions,
        max_conns_per_ip,
        fd_reserve,
    })
}

fn shutdown(s: &Sec) -> Result<ShutdownConfig> {
    let drain_timeout = s.seconds("drain_timeout", 0, 86400, 30)?;
    s.finish()?;
    Ok(ShutdownConfig { drain_timeout })
}

fn events(s: &Sec) -> Result<EventsConfig> {
    let webhook_url = s.parsed("webhook_url", WebhookUrl::parse)?.map(|u| u.value);
    s.finish()?;
    Ok(EventsConfig { webhook_url })
}

/// `nats://host[:port]` or `tls://host[:port]`; the flag says TLS. Credentials have keys of
/// their own, never the URL (it is shown in logs and `/api/status`).
fn parse_nats_url(text: &str) -> std::result::Result<(HostPort, bool), String> {
    // Before anything echoes the text: it may hold a password.
    if text.contains('@') {
        return Err(
            "user:password in the URL is not supported: use nats_user and nats_password"
                .to_string(),
        );
    }
    let (rest, tls) = match (text.strip_prefix("nats://"), text.strip_prefix("tls://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(format!("{text:?} is not a nats:// or tls:// URL")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#']) || rest.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?} is not nats://host[:port] or tls://host[:port]"
        ));
    }
    Ok((parse_host_port(rest, Some(4222))?, tls))
}

/// A file that opens and holds at least one PEM certificate.
fn pem_certificates(text: &str) -> std::result::Result<PathBuf, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let path = readable_file(text)?;
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|items| items.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("{text:?} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{text:?} holds no PEM certificate"));
    }
    Ok(path)
}

/// A file that opens and holds a PEM private key (its parse error is not echoed: it may quote
/// the key).
fn pem_private_key(text: &str) -> std::result::Result<PathBuf, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let path = readable_file(text)?;
    PrivateKeyDer::from_pem_file(&path)
        .map_err(|_| format!("{text:?} holds no PEM private key"))?;
    Ok(path)
}

/// A regular file this process can open.
fn readable_file(text: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match std::fs::File::open(&path) {
        Ok(_) if path.is_file() => Ok(path),
        Ok(_) => Err(format!("{text:?} is not a file")),
        Err(e) => Err(format!("{text:?} cannot be read: {e}")),
    }
}

/// A node id is one NATS subject token, so it must not hold `.`, `*`, `>` or spaces.
fn parse_node_id(text: &str) -> std::result::Result<String, String> {
    if text.is_empty() || text.len() > 64 {
        return Err("must be 1-64 characters".to_string());
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(bad) => Err(format!(
            "contains {bad:?}: only letters, digits, '-' and '_' are allowed"
        )),
        None => Ok(text.to_string()),
    }
}

fn cluster(s: &Sec) -> Result<Option<ClusterConfig>> {
    let nats = s.parsed("nats", parse_nats_url)?;
    let node_id = s.parsed("node_id", parse_node_id)?;
    let presence_ttl = s.seconds("presence_ttl", 2, 600, 5)?;
    let nats_auth = nats_auth(s)?;
    let nats_tls = nats_tls(s, nats.as_ref().map(|n| (n.value.1, n.line)))?;
    s.finish()?;
    let (nats, node_id) = match (nats, node_id) {
        (None, None) => {
            // Credentials or TLS for no server: most likely `nats` was forgotten.
            let stray = s.entries.iter().find(|e| e.key.starts_with("nats_"));
            return match stray {
                Some(entry) => Err(s.missing("nats", Some((&entry.key, entry.line)))),
                None => Ok(None),
            };
        }
        (Some(nats), Some(node_id)) => (nats, node_id),
        (Some(nats), None) => return Err(s.missing("node_id", Some(("nats", nats.line)))),
        (None, Some(node)) => return Err(s.missing("nats", Some(("node_id", node.line)))),
    };
    Ok(Some(ClusterConfig {
        nats: nats.value.0,
        node_id: node_id.value,
        presence_ttl,
        nats_auth,
        nats_tls,
    }))
}

/// `nats_user` + `nats_password`, or `nats_token`, or neither.
fn nats_auth(s: &Sec) -> Result<NatsAuth> {
    let user = s.optional("nats_user")?;
    let password = s.secret("nats_password")?;
    let token = s.secret("nats_token")?;
    if let Some(token) = &token {
        if let Some(line) = user
            .as_ref()
            .map(|u| u.line)
            .or(password.as_ref().map(|p| p.line))
        {
            return Err(s.err(
                Some(token.line),
                "nats_token",
                format!(
                    "and nats_user/nats_password (line {line}) are two ways to log in: give one"
                ),
            ));
        }
    }
    match (user, password, token) {
        (Some(user), Some(password), None) => Ok(NatsAuth::UserPassword {
            user: user.value,
            password: password.value,
        }),
        (Some(user), None, None) => Err(s.missing("nats_password", Some(("nats_user", user.line)))),
        (None, Some(password), None) => {
            Err(s.missing("nats_user", Some(("nats_password", password.line))))
        }
        (None, None, Some(token)) => Ok(NatsAuth::Token(token.value)),
        _ => Ok(NatsAuth::None),
    }
}

/// TLS is on with a `tls://` URL, `nats_tls = true`, or a CA or client certificate given;
/// `nats_tls = false` beside any of those is a contradiction. `url` is the URL's TLS flag and line.
fn nats_tls(s: &Sec, url: Option<(bool, usize)>) -> Result<Option<NatsTls>> {
    let flag = s.bool("nats_tls")?;
    let ca = s.parsed("nats_tls_ca", pem_certificates)?;
    let cert = s.parsed("nats_tls_cert", pem_certificates)?;
    let key = s.parsed("nats_tls_key", pem_private_key)?;
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some(Located {
            line: cert.line,
            value: TlsConfig {
                cert: cert.value,
                key: key.value,
            },
        }),
        (Some(cert), None) => {
            return Err(s.err(
                Some(cert.line),
                "nats_tls_cert",
                "is set without [cluster] nats_tls_key (give both or neither)",
            ))
        }
        (None, Some(key)) => {
            return Err(s.err(
                Some(key.line),
                "nats_tls_key",
                "is set without [cluster] nats_tls_cert (give both or neither)",
            ))
        }
        (None, None) => None,
    };
    let wanted_by = match url {
        Some((true, line)) => Some(("nats is a tls:// URL", line)),
        _ => ca
            .as_ref()
            .map(|c| ("nats_tls_ca is set", c.line))
            .or(client.as_ref().map(|c| ("nats_tls_cert is set", c.line))),
    };
    match (flag, wanted_by) {
        (Some(flag), Some((why, line))) if !flag.value => Err(s.err(
            Some(flag.line),
            "nats_tls",
            format!("is false, but {why} (line {line})"),
        )),
        (Some(flag), None) if !flag.value => Ok(None),
        (None, None) => Ok(None),
        _ => Ok(Some(NatsTls {
            ca: ca.map(|c| c.value),
            client: client.map(|c| c.value),
        })),
    }
}

/// Validates a document read from `file` in `form`.
pub(crate) fn build(file: &Path, form: ConfigForm, doc: &RawDoc) -> Result<Config> {
    let ctx = Ctx {
        file,
        form,
        warnings: RefCell::new(Vec::new()),
    };

    // Section names first: a misspelt [globl] should be reported as such, not as "appid required".
    for raw in &doc.sections {
        let name = raw.name.as_str();
        if name == "rtc" || name == "rtm" {
            ignored_cloud_section(&ctx, raw);
            continue;
        }
        if RTX_SECTIONS.contains(&name) {
            continue;
        }
        match form {
            ConfigForm::Toml if NATIVE_SECTIONS.contains(&name) => {}
            ConfigForm::Toml => {
                let known: Vec<&str> = RTX_SECTIONS
                    .iter()
                    .chain(NATIVE_SECTIONS)
                    .copied()
                    .collect();
                return Err(ctx.error(
                    raw.line,
                    Some(format!("[{name}]")),
                    format!("unknown section (known sections: {})", known.join(", ")),
                ));
            }
            ConfigForm::RtxConf if NATIVE_SECTIONS.contains(&name) => ctx.warn(
                raw.line,
                Some(format!("[{name}]")),
                "is only read from the TOML config form; ignored".to_string(),
            ),
            ConfigForm::RtxConf => ctx.warn(
                raw.line,
                Some(format!("[{name}]")),
                "unknown section, ignored".to_string(),
            ),
        }
    }

    let sec = |name: &str| Sec::new(&ctx, name, doc.section(name));
    let global_sec = sec("global");
    let global_keys = global(&global_sec)?;
    let rtm2sip = rtm2sip(&sec("rtm2sip"))?;
    let proxy = proxy(&sec("proxy"))?;
    let pstn = pstn(&sec("pstn"))?;
    let log = log(&sec("log"))?;
    let native = form == ConfigForm::Toml;
    let (sip, sip_pbx) = if native {
        sip(&sec("sip"))?
    } else {
        (SipConfig::default(), None)
    };
    let sip_svr = match (global_keys.sip_svr, sip_pbx) {
        (Some(list), None) | (None, Some(list)) => list.value,
        (Some(svr), Some(pbx)) => {
            return Err(ctx.error(
                Some(pbx.line),
                Some("[sip] pbx".to_string()),
                format!(
                    "and [global] sip_svr (line {}) both list PBXs: give one or the other",
                    svr.line
                ),
            ))
        }
        (None, None) => return Err(global_sec.missing("sip_svr", None)),
    };
    let global = GlobalConfig {
        appid: global_keys.appid,
        sip_svr,
        sip_local_port: global_keys.sip_local_port,
    };
    let media = if native {
        media(&sec("media"))?
    } else {
        MediaConfig::default()
    };
    let http = if native {
        http(&sec("http"))?
    } else {
        HttpConfig::default()
    };
    let auth = if native {
        auth(&sec("auth"))?
    } else {
        AuthConfig::default()
    };
    let limits = if native {
        limits(&sec("limits"))?
    } else {
        LimitsConfig::default()
    };
    let shutdown = if native {
        shutdown(&sec("shutdown"))?
    } else {
        ShutdownConfig::default()
    };
    let events = if native {
        events(&sec("events"))?
    } else {
        EventsConfig::default()
    };
    let cluster = if native {
        cluster(&sec("cluster"))?
    } else {
        None
    };

    if rtm2sip.is_some() && proxy.is_none() {
        ctx.warn(
            None,
            Some("[rtm2sip] on".to_string()),
            "browsers may call SIP numbers but [proxy] is off: calls are placed without a registered SIP account".to_string(),
        );
    }

    Ok(Config {
        source: file.to_path_buf(),
        form,
        global,
        rtm2sip,
        proxy,
        pstn,
        log,
        sip,
        media,
        http,
        auth,
        limits,
        shutdown,
        events,
        cluster,
        warnings: ctx.warnings.into_inner(),
    })
}
