//! Login tokens: `"{expiry_unix}:{hexmac}"` with `hexmac = HMAC-SHA256(secret, "{uid}:{expiry_unix}")`.
//!
//! Operators mint tokens in their own backend (any HMAC library or `openssl dgst -hmac`), so the
//! bridge needs no user database; the expiry bounds how long a leaked token is useful.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not of the form `expiry:hex`, or the MAC does not match this uid and secret.
    #[error("token is not valid for this user")]
    Invalid,
    /// The token's expiry time has passed.
    #[error("token expired at {expiry} (now {now})")]
    Expired {
        /// The token's expiry (unix seconds).
        expiry: u64,
        /// The hub's clock (unix seconds).
        now: u64,
    },
    /// The token expires further ahead than `[auth] max_token_ttl` allows.
    #[error("token expires at {expiry}, more than max_token_ttl ({max_ttl} s) after now ({now})")]
    TooLong {
        /// The token's expiry (unix seconds).
        expiry: u64,
        /// The hub's clock (unix seconds).
        now: u64,
        /// `[auth] max_token_ttl` in seconds.
        max_ttl: u64,
    },
}

fn mac(secret: &str, uid: &str, expiry: u64) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{uid}:{expiry}").as_bytes());
    mac
}

/// Mints the token `uid` presents at login, valid until `expiry` (unix seconds).
pub fn mint_token(secret: &str, uid: &str, expiry: u64) -> String {
    let tag = mac(secret, uid, expiry).finalize().into_bytes();
    format!("{expiry}:{}", hex::encode(tag))
}

/// Checks a token for `uid` at time `now` (unix seconds), in constant time for the MAC; its
/// expiry must lie within `max_ttl` seconds of now.
pub fn verify_token(
    secret: &str,
    uid: &str,
    token: &str,
    now: u64,
    max_ttl: u64,
) -> Result<(), TokenError> {
    let (expiry, hexmac) = token.split_once(':').ok_or(TokenError::Invalid)?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Invalid);
    }
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Invalid)?;
    let tag = hex::decode(hexmac).map_err(|_| TokenError::Invalid)?;
    mac(secret, uid, expiry)
        .verify_slice(&tag)
        .map_err(|_| TokenError::Invalid)?;
    if expiry <= now {
        return Err(TokenError::Expired { expiry, now });
    }
    if expiry - now > max_ttl {
        return Err(TokenError::TooLong {
            expiry,
            now,
            max_ttl,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn tokens_living_longer_than_max_ttl_are_refused() {
        let year_2500 = 16_725_225_600;
        let now = 1_767_225_600;
        let token = mint_token("s3cret", "alice", year_2500);
        assert_eq!(
            verify_token("s3cret", "alice", &token, now, DAY),
            Err(TokenError::TooLong {
                expiry: year_2500,
                now,
                max_ttl: DAY
            })
        );
        let in_a_day = mint_token("s3cret", "alice", now + DAY);
        assert_eq!(verify_token("s3cret", "alice", &in_a_day, now, DAY), Ok(()));
        let a_day_and_a_second = mint_token("s3cret", "alice", now + DAY + 1);
        assert!(matches!(
            verify_token("s3cret", "alice", &a_day_and_a_second, now, DAY),
            Err(TokenError::TooLong { .. })
        ));
    }

    #[test]
    fn minted_token_verifies_until_expiry() {
        let token = mint_token("s3cret", "alice", 1000);
        assert!(token.starts_with("1000:"));
        assert_eq!(token.len(), 5 + 64);
        assert_eq!(verify_token("s3cret", "alice", &token, 999, DAY), Ok(()));
        assert_eq!(
            verify_token("s3cret", "alice", &token, 1000, DAY),
            Err(TokenError::Expired {
                expiry: 1000,
                now: 1000
            })
        );
    }

    #[test]
    fn matches_openssl() {
        // printf '%s' 'alice:1767225600' | openssl dgst -sha256 -hmac 'secret'
        assert_eq!(
            mint_token("secret", "alice", 1_767_225_600),
            "1767225600:84c31df538c229db7a644aa73aae4a0330bda6c90582e8bbd15d955bc4eed64a"
        );
    }

    #[test]
    fn wrong_uid_secret_or_form_is_invalid() {
        let token = mint_token("s3cret", "alice", 1000);
        assert_eq!(
            verify_token("s3cret", "bob", &token, 1, DAY),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify_token("other", "alice", &token, 1, DAY),
            Err(TokenError::Invalid)
        );
        for bad in [
            "",
            "1000",
            ":abcd",
            "x:abcd",
            "1000:zz",
            "1000:",
            "+1000:00",
            "99999999999999999999999:00",
        ] {
            assert_eq!(
                verify_token("s3cret", "alice", bad, 1, DAY),
                Err(TokenError::Invalid),
                "{bad:?}"
            );
        }
        // A changed expiry invalidates the MAC (no extending a token).
        let extended = token.replacen("1000", "9000", 1);
        assert_eq!(
            verify_token("s3cret", "alice", &extended, 1, DAY),
            Err(TokenError::Invalid)
        );
    }
}
