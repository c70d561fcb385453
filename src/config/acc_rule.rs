//! SRProxy's `acc_rule`: which SIP numbers browsers may call.
//!
//! Grammar (decisions where SRProxy was silent):
//! - The rule is a list of tokens separated by `;`. Spaces around a token are ignored. One
//!   trailing `;` is allowed (`1005;`); any other empty token (`;1005`, `1005;;1006`) is an
//!   error, as it is almost always a typo.
//! - A *literal* token is a SIP user made of ASCII letters, digits and `+ * # . - _`; it allows
//!   exactly that number.
//! - A *range* token is `prefix[from-to]`: an optional literal prefix and two decimal numbers
//!   in brackets, nothing after `]`. It allows `prefix` followed by every number from `from`
//!   to `to`, zero-padded to the width of `from`: `10[06-19]` is 1006..1019, `[1-100]` is
//!   1..100, `[01-100]` is 01..99 and 100. `from > to`, empty bounds, non-digits inside the
//!   brackets, more than 18 digits, a missing or stray bracket are errors naming the token.
//! - An empty rule allows nothing (the loader refuses an empty rule when `[rtm2sip] on=1`).
//!
//! [`AccRule::allows`] never expands ranges, so `[0000-9999]` (or wider) costs the same as a
//! literal.

use std::fmt;
use std::str::FromStr;

/// Widest bound accepted inside brackets; keeps every value within `u64`.
const MAX_DIGITS: usize = 18;

/// A parsed `acc_rule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccRule {
    tokens: Vec<AccToken>,
}

/// One `;`-separated part of an [`AccRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccToken {
    /// Exactly this number.
    Literal(String),
    /// `prefix` + a zero-padded number in `from..=to`.
    Range {
        /// Text before `[`.
        prefix: String,
        /// Lower bound.
        from: u64,
        /// Upper bound.
        to: u64,
        /// Zero-padding width (digits written for `from`).
        width: usize,
    },
}

/// Why an `acc_rule` was refused; names the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token \"{token}\": {reason}")]
pub struct AccRuleError {
    /// The token as written.
    pub token: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AccRule {
    /// Whether `number` is one of the numbers this rule allows.
    pub fn allows(&self, number: &str) -> bool {
        self.tokens.iter().any(|token| token.allows(number))
    }

    /// True when the rule allows nothing.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The parsed tokens, in file order.
    pub fn tokens(&self) -> &[AccToken] {
        &self.tokens
    }
}

impl AccToken {
    fn allows(&self, number: &str) -> bool {
        match self {
            AccToken::Literal(literal) => literal == number,
            AccToken::Range {
                prefix,
                from,
                to,
                width,
            } => {
                let Some(digits) = number.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                if digits.is_empty()
                    || digits.len() > MAX_DIGITS + 1
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return false;
                }
                // The range writes each value zero-padded to `width`; a longer value is written
                // without leading zeros. Anything else (e.g. "0106" for 10[06-19]) is not listed.
                let canonical =
                    digits.len() == *width || (digits.len() > *width && !digits.starts_with('0'));
                canonical
                    && digits
                        .parse::<u64>()
                        .is_ok_and(|n| (*from..=*to).contains(&n))
            }
        }
    }
}

impl fmt::Display for AccToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccToken::Literal(literal) => f.write_str(literal),
            AccToken::Range {
                prefix,
                from,
                to,
                width,
            } => write!(f, "{prefix}[{from:0width$}-{to:0width$}]"),
        }
    }
}

impl fmt::Display for AccRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{token}")?;
        }
        Ok(())
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '.' | '-' | '_')
}

fn parse_literal(token: &str, text: &str, what: &str) -> Result<String, AccRuleError> {
    match text.chars().find(|c| !is_literal_char(*c)) {
        Some(bad) => Err(AccRuleError {
            token: token.to_string(),
            reason: format!("{what} contains '{bad}' (allowed: letters, digits and + * # . - _)"),
        }),
        None => Ok(text.to_string()),
    }
}

fn parse_bound(token: &str, text: &str, which: &str) -> Result<u64, AccRuleError> {
    let fail = |reason: String| AccRuleError {
        token: token.to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(fail(format!("range {which} is empty")));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_digit()) {
        return Err(fail(format!(
            "range {which} \"{text}\" contains '{bad}' (only digits allowed inside [ ])"
        )));
    }
    if text.len() > MAX_DIGITS {
        return Err(fail(format!(
            "range {which} \"{text}\" has more than {MAX_DIGITS} digits"
        )));
    }
    text.parse::<u64>()
        .map_err(|e| fail(format!("range {which} \"{text}\": {e}")))
}

fn parse_token(token: &str) -> Result<AccToken, AccRuleError> {
    let fail = |reason: &str| AccRuleError {
        token: token.to_string(),
        reason: reason.to_string(),
    };
    let Some(open) = token.find('[') else {
        if token.contains(']') {
            return Err(fail("']' without '['"));
        }
        return parse_literal(token, token, "number").map(AccToken::Literal);
    };
    let prefix = parse_literal(token, &token[..open], "prefix")?;
    let rest = &token[open + 1..];
    let Some(close) = rest.find(']') else {
        return Err(fail("missing ']'"));
    };
    let inside = &rest[..close];
    if inside.contains('[') {
        return Err(fail("nested '['"));
    }
    if !rest[close + 1..].is_empty() {
        return Err(fail("text after ']' (a range must end the token)"));
    }
    let Some((from_text, to_text)) = inside.split_once('-') else {
        return Err(fail("range needs the form [from-to]"));
    };
    let from = parse_bound(token, from_text, "start")?;
    let to = parse_bound(token, to_text, "end")?;
    if from > to {
        return Err(fail(&format!(
            "range start {from_text} is greater than end {to_text}"
        )));
    }
    Ok(AccToken::Range {
        prefix,
        from,
        to,
        width: from_text.len(),
    })
}

impl FromStr for AccRule {
    type Err = AccRuleError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        // One trailing ';' is allowed; after removing it, every token must be non-empty.
        let rule = rule.trim();
        let rule = rule.strip_suffix(';').unwrap_or(rule);
        if rule.trim().is_empty() {
            return Ok(AccRule::default());
        }
        let mut tokens = Vec::new();
        for (i, part) in rule.split(';').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err(AccRuleError {
                    token: String::new(),
                    reason: format!(
                        "empty token at position {} (only a trailing ';' may be left empty)",
                        i + 1
                    ),
                });
            }
            tokens.push(parse_token(part)?);
        }
        Ok(AccRule { tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> AccRule {
        text.parse().expect("valid rule")
    }

    fn error(text: &str) -> AccRuleError {
        text.parse::<AccRule>().expect_err("invalid rule")
    }

    #[test]
    fn srproxy_example_allows_literal_and_padded_range() {
        let r = rule("1005;10[06-19]");
        for n in ["1005", "1006", "1010", "1019"] {
            assert!(r.allows(n), "{n} should be allowed");
        }
        for n in ["1004", "1020", "10", "106", "10019", "", "1005 ", "x1006"] {
            assert!(!r.allows(n), "{n:?} should be refused");
        }
    }

    #[test]
    fn padding_comes_from_the_width_of_from() {
        let r = rule("[001-120]");
        assert!(r.allows("001"));
        assert!(r.allows("099"));
        assert!(r.allows("120"));
        assert!(!r.allows("1"), "unpadded value is not listed");
        assert!(!r.allows("01"));
        assert!(!r.allows("0001"));
        assert!(!r.allows("121"));
    }

    #[test]
    fn values_wider_than_from_are_written_without_padding() {
        let r = rule("[1-100]");
        assert!(r.allows("1"));
        assert!(r.allows("42"));
        assert!(r.allows("100"));
        assert!(!r.allows("01"));
        assert!(!r.allows("0"));
        assert!(!r.allows("101"));

        let r = rule("[01-100]");
        assert!(r.allows("01"));
        assert!(r.allows("99"));
        assert!(r.allows("100"));
        assert!(!r.allows("1"));
        assert!(!r.allows("0100"));
    }

    #[test]
    fn huge_ranges_are_checked_without_expansion() {
        let r = rule("9[000000000000000000-999999999999999999]");
        assert!(r.allows("9123456789012345678"));
        assert!(!r.allows("912345678901234567"));
        assert!(!r.allows("91234567890123456789"));
        let r = rule("[0000-9999]");
        assert!(r.allows("0000"));
        assert!(r.allows("0420"));
        assert!(!r.allows("420"));
    }

    #[test]
    fn literals_may_use_sip_user_characters() {
        let r = rule("+4930123;*97;alice;#1; 2000 ");
        for n in ["+4930123", "*97", "alice", "#1", "2000"] {
            assert!(r.allows(n), "{n}");
        }
        assert!(!r.allows("Alice"), "literals are case-sensitive");
    }

    #[test]
    fn display_prints_the_rule_back() {
        for text in ["1005;10[06-19]", "[001-120]", "+49[1-100];abc", ""] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(rule(" 1005 ; 10[06-19];").to_string(), "1005;10[06-19]");
    }

    #[test]
    fn trailing_semicolon_and_empty_rule() {
        assert_eq!(rule("1005;").tokens().len(), 1);
        assert!(rule("").is_empty());
        assert!(!rule("").allows(""));
        assert!(!rule("").allows("1005"));
        assert!(rule(";").is_empty());
        assert!(error(";;").reason.contains("empty token"));
    }

    #[test]
    fn empty_token_in_the_middle_or_front_is_an_error() {
        assert!(error("1005;;1006").reason.contains("empty token"));
        assert!(error(";1005").reason.contains("empty token"));
    }

    #[test]
    fn range_start_greater_than_end_is_an_error() {
        let e = error("1005;10[19-06]");
        assert_eq!(e.token, "10[19-06]");
        assert!(e.reason.contains("greater"), "{e}");
    }

    #[test]
    fn non_digits_inside_brackets_are_an_error() {
        let e = error("10[0a-19]");
        assert_eq!(e.token, "10[0a-19]");
        assert!(e.reason.contains("'a'"), "{e}");
        assert!(error("10[06-1x]").reason.contains("'x'"));
        assert!(error("10[-5-9]").reason.contains("empty"));
    }

    #[test]
    fn missing_or_stray_brackets_are_an_error() {
        assert!(error("10[06-19").reason.contains("missing ']'"));
        assert!(error("1006-19]").reason.contains("']' without '['"));
        assert!(error("10[0[6-19]]").reason.contains("nested"));
        assert!(error("10[06-19]5").reason.contains("after ']'"));
        assert!(error("10[06-19][1-2]").reason.contains("after ']'"));
    }

    #[test]
    fn range_without_dash_or_bounds_is_an_error() {
        assert!(error("10[0619]").reason.contains("[from-to]"));
        assert!(error("10[]").reason.contains("[from-to]"));
        assert!(error("10[-19]").reason.contains("start is empty"));
        assert!(error("10[06-]").reason.contains("end is empty"));
    }

    #[test]
    fn too_many_digits_is_an_error() {
        assert!(error("[0-1234567890123456789]")
            .reason
            .contains("more than 18 digits"));
    }

    #[test]
    fn bad_characters_in_literal_or_prefix_are_an_error() {
        let e = error("1005;10 06");
        assert_eq!(e.token, "10 06");
        assert!(e.reason.contains("' '"));
        assert!(error("sip:1005").reason.contains("':'"));
        assert!(error("a@b[1-2]").reason.contains("prefix"));
    }

    #[test]
    fn error_message_names_the_token() {
        assert_eq!(
            error("1005;10[19-06]").to_string(),
            "invalid token \"10[19-06]\": range start 19 is greater than end 06"
        );
    }
}
