//! Screening of an incoming INVITE before any dialog exists (sans-IO): who may call us, and which
//! web user the call is for.

use std::net::{IpAddr, SocketAddr};

use super::target::{self, TargetSources};

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
    /// Where the target web user can be read from (target header, Request-URI, To).
    pub target: TargetSources<'a>,
}

/// Who may send us calls: every configured PBX and `sip.allowed_peers`.
#[derive(Debug, Clone)]
pub(crate) struct PeerPolicy {
    pub pbxs: Vec<IpAddr>,
    pub allowed: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Whether `ip` may send requests to the bridge.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.pbxs.contains(&ip) || self.allowed.contains(&ip)
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
    match target::resolve(&facts.target, dial_prefix) {
        Ok(target_uid) => Screening::Accept { target_uid },
        Err(why) => {
            let (code, reason) = why.status();
            Screening::Refuse { code, reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> PeerPolicy {
        PeerPolicy {
            pbxs: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            allowed: vec!["10.0.0.9".parse().unwrap()],
        }
    }

    fn facts<'a>(src: &str, x: Option<&'a str>, user: Option<&'a str>) -> InviteFacts<'a> {
        InviteFacts {
            source: src.parse().unwrap(),
            target: TargetSources {
                header: x,
                ruri_user: user,
                to_user: None,
            },
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
    fn freeswitch_name_addr_and_to_user_are_understood() {
        let mut f = facts("10.0.0.1:5060", Some("<sip:alice@10.0.0.1>"), Some("1000"));
        f.target.to_user = Some("1000");
        assert_eq!(
            screen_invite(&f, &peers(), "0"),
            Screening::Accept {
                target_uid: "alice".into()
            }
        );
        f.target.header = Some("<sip:@10.0.0.1>");
        assert_eq!(
            screen_invite(&f, &peers(), "0"),
            Screening::Refuse {
                code: 484,
                reason: "Address Incomplete"
            }
        );
        f.target.header = None;
        assert_eq!(
            screen_invite(&f, &peers(), "0"),
            Screening::Refuse {
                code: 404,
                reason: "Not Found"
            },
            "R-URI and To rewritten to the proxy account: nothing dialled is left"
        );
        f.target.to_user = Some("0alice");
        assert!(matches!(
            screen_invite(&f, &peers(), "0"),
            Screening::Accept { .. }
        ));
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
        let s = screen_invite(&facts("10.0.0.2:5070", Some("alice"), None), &peers(), "0");
        assert!(
            matches!(s, Screening::Accept { .. }),
            "the second PBX may call too"
        );
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
