//! Screening of an incoming INVITE before any dialog exists (sans-IO): who may call us, and which
//! web user the call is for.

use std::net::{IpAddr, SocketAddr};

/// What to do with a new INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Screening {
    /// Accept it as a call for `target_uid`.
    Accept { target_uid: String },
    /// Refuse it with this final response; no call is created.
    Refuse { code: u16, reason: &'static str },
}

/// The facts of an INVITE the screening needs (already pulled out of the SIP message).
#[derive(Debug, Clone)]
pub(crate) struct InviteFacts<'a> {
    /// Where the INVITE came from (UDP source / TCP peer).
    pub source: SocketAddr,
    /// `X-Number` header, if any (set by the PBX dialplan: `0<id>` -> `X-Number: <id>`).
    pub x_number: Option<&'a str>,
    /// Request-URI user.
    pub ruri_user: Option<&'a str>,
}

/// Who may send us calls: the PBX and `sip.allowed_peers`.
#[derive(Debug, Clone)]
pub(crate) struct PeerPolicy {
    pub pbx: IpAddr,
    pub allowed: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Whether `ip` may send requests to the bridge.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        ip == self.pbx || self.allowed.contains(&ip)
    }
}

/// Decides what to do with an INVITE: 403 from strangers, 404/484 without a usable target.
pub(crate) fn screen_invite(
    facts: &InviteFacts<'_>,
    peers: &PeerPolicy,
    dial_prefix: &str,
) -> Screening {
    if !peers.allows(facts.source.ip()) {
        return Screening::Refuse {
            code: 403,
            reason: "Forbidden",
        };
    }
    let from_header = facts.x_number.map(str::trim).filter(|s| !s.is_empty());
    let target = match from_header {
        Some(number) => number.to_string(),
        None => match facts.ruri_user.map(str::trim) {
            None | Some("") => {
                return Screening::Refuse {
                    code: 484,
                    reason: "Address Incomplete",
                }
            }
            Some(user) => {
                let stripped = if dial_prefix.is_empty() {
                    Some(user)
                } else {
                    user.strip_prefix(dial_prefix)
                };
                match stripped.map(str::trim) {
                    Some(uid) if !uid.is_empty() => uid.to_string(),
                    // the prefix alone: the number is incomplete
                    Some(_) => {
                        return Screening::Refuse {
                            code: 484,
                            reason: "Address Incomplete",
                        }
                    }
                    // not our prefix: nobody here by that name
                    None => {
                        return Screening::Refuse {
                            code: 404,
                            reason: "Not Found",
                        }
                    }
                }
            }
        },
    };
    if !valid_uid(&target) {
        return Screening::Refuse {
            code: 404,
            reason: "Not Found",
        };
    }
    Screening::Accept { target_uid: target }
}

/// Web user ids are printable and short; anything else cannot be a user of the hub.
fn valid_uid(uid: &str) -> bool {
    uid.len() <= 128 && uid.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> PeerPolicy {
        PeerPolicy {
            pbx: "10.0.0.1".parse().unwrap(),
            allowed: vec!["10.0.0.9".parse().unwrap()],
        }
    }

    fn facts<'a>(src: &str, x: Option<&'a str>, user: Option<&'a str>) -> InviteFacts<'a> {
        InviteFacts {
            source: src.parse().unwrap(),
            x_number: x,
            ruri_user: user,
        }
    }

    #[test]
    fn x_number_wins_over_the_request_uri() {
        let s = screen_invite(
            &facts("10.0.0.1:5060", Some("alice"), Some("1000")),
            &peers(),
            "0",
        );
        assert_eq!(
            s,
            Screening::Accept {
                target_uid: "alice".into()
            }
        );
    }

    #[test]
    fn request_uri_user_has_the_dial_prefix_stripped() {
        let s = screen_invite(&facts("10.0.0.1:5060", None, Some("0bob")), &peers(), "0");
        assert_eq!(
            s,
            Screening::Accept {
                target_uid: "bob".into()
            }
        );
        let s = screen_invite(
            &facts("10.0.0.1:5060", Some("  "), Some("0bob")),
            &peers(),
            "0",
        );
        assert_eq!(
            s,
            Screening::Accept {
                target_uid: "bob".into()
            },
            "blank X-Number ignored"
        );
        let s = screen_invite(&facts("10.0.0.1:5060", None, Some("bob")), &peers(), "");
        assert_eq!(
            s,
            Screening::Accept {
                target_uid: "bob".into()
            },
            "no prefix configured"
        );
    }

    #[test]
    fn strangers_are_refused_and_allowed_peers_accepted() {
        let s = screen_invite(&facts("192.0.2.7:5060", Some("alice"), None), &peers(), "0");
        assert_eq!(
            s,
            Screening::Refuse {
                code: 403,
                reason: "Forbidden"
            }
        );
        let s = screen_invite(&facts("10.0.0.9:5099", Some("alice"), None), &peers(), "0");
        assert!(matches!(s, Screening::Accept { .. }));
    }

    #[test]
    fn missing_or_incomplete_targets_are_refused() {
        let p = peers();
        let src = "10.0.0.1:5060";
        assert_eq!(
            screen_invite(&facts(src, None, None), &p, "0"),
            Screening::Refuse {
                code: 484,
                reason: "Address Incomplete"
            }
        );
        assert_eq!(
            screen_invite(&facts(src, None, Some("0")), &p, "0"),
            Screening::Refuse {
                code: 484,
                reason: "Address Incomplete"
            }
        );
        assert_eq!(
            screen_invite(&facts(src, None, Some("1234")), &p, "0"),
            Screening::Refuse {
                code: 404,
                reason: "Not Found"
            },
            "not dialled with the prefix"
        );
        assert_eq!(
            screen_invite(&facts(src, Some("a b"), None), &p, "0"),
            Screening::Refuse {
                code: 404,
                reason: "Not Found"
            },
            "not a possible user id"
        );
    }
}
