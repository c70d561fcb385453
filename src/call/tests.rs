//! Every row of SPEC §3's tables, fed as events into the state machine.

use std::time::Duration;

use super::machine::*;

const RING: Duration = Duration::from_secs(45);

fn allow_10xx(n: &str) -> bool {
    n.len() == 4 && n.starts_with("10")
}

fn policy(pstn: Option<&'static str>) -> CallPolicy<'static> {
    CallPolicy {
        number_allowed: &allow_10xx,
        pstn_prefix: pstn,
        ring_timeout: RING,
    }
}

fn local_states(actions: &[Action]) -> Vec<(LocalState, Option<FailureReason>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Hub(HubAction::LocalState { state, reason, .. }) => Some((*state, *reason)),
            _ => None,
        })
        .collect()
}

fn sip_actions(actions: &[Action]) -> Vec<SipAction> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Sip(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn ended(actions: &[Action]) -> Option<EndReason> {
    actions.iter().find_map(|a| match a {
        Action::Ended(r) => Some(r.clone()),
        _ => None,
    })
}

fn outgoing(content: &str) -> (Call, Vec<Action>) {
    Call::web_to_sip("c1", "alice", "1005", content, &policy(None))
}

#[test]
fn web_to_sip_invite_sent_is_sent_to_remote() {
    let (call, actions) = outgoing("");
    assert_eq!(
        sip_actions(&actions),
        vec![SipAction::Invite {
            callee: "1005".into(),
            caller_id: "alice".into(),
            headers: vec![],
            via_pstn: false,
        }]
    );
    assert_eq!(
        local_states(&actions),
        vec![(LocalState::SentToRemote, None)]
    );
    assert!(actions.contains(&Action::ArmRingTimer(RING)));
    assert_eq!(call.phase(), Phase::Setup);
}

#[test]
fn web_to_sip_provisional_is_received_by_remote_once() {
    let (mut call, _) = outgoing("");
    let a = call.handle(Event::SipProgress { code: 100 });
    assert_eq!(local_states(&a), vec![(LocalState::ReceivedByRemote, None)]);
    assert!(call.handle(Event::SipProgress { code: 180 }).is_empty());
    assert!(call.handle(Event::SipProgress { code: 183 }).is_empty());
    assert_eq!(call.phase(), Phase::Ringing);
}

#[test]
fn web_to_sip_answered_carries_number_and_chan_id() {
    let (mut call, _) = outgoing(r#"{"ChanId":"room-7"}"#);
    call.handle(Event::SipProgress { code: 180 });
    let a = call.handle(Event::SipAnswered);
    assert!(a.contains(&Action::CancelRingTimer));
    let Some(Action::Hub(HubAction::LocalState {
        state: LocalState::AcceptedByRemote,
        response: Some(response),
        ..
    })) = a.iter().find(|x| matches!(x, Action::Hub(_)))
    else {
        panic!("no ACCEPTED_BY_REMOTE in {a:?}");
    };
    let v: serde_json::Value = serde_json::from_str(response).unwrap();
    assert_eq!(v["SipNumber"], "1005");
    assert_eq!(v["ChanId"], "room-7");
    assert_eq!(call.phase(), Phase::Established);
}

#[test]
fn web_to_sip_busy_decline_and_global_refusals_are_refused_by_remote() {
    for code in [486, 600, 603] {
        let (mut call, _) = outgoing("");
        let a = call.handle(Event::SipFailed {
            code,
            reason: "Busy Here".into(),
        });
        assert_eq!(
            local_states(&a),
            vec![(LocalState::RefusedByRemote, None)],
            "{code}"
        );
        assert_eq!(ended(&a), Some(EndReason::SipFailed(code)));
        let Some(Action::Hub(HubAction::LocalState {
            response: Some(r), ..
        })) = a.first()
        else {
            panic!("no response")
        };
        assert!(r.contains(&code.to_string()), "response {r} lacks the code");
    }
}

#[test]
fn web_to_sip_not_found_and_unavailable_are_peer_offline() {
    for code in [404, 480] {
        let (mut call, _) = outgoing("");
        call.handle(Event::SipProgress { code: 100 });
        let a = call.handle(Event::SipFailed {
            code,
            reason: "Not Found".into(),
        });
        assert_eq!(
            local_states(&a),
            vec![(LocalState::Failure, Some(FailureReason::PeerOffline))]
        );
    }
}

#[test]
fn web_to_sip_408_is_peer_no_response() {
    let (mut call, _) = outgoing("");
    let a = call.handle(Event::SipFailed {
        code: 408,
        reason: "Request Timeout".into(),
    });
    assert_eq!(
        local_states(&a),
        vec![(LocalState::Failure, Some(FailureReason::PeerNoResponse))]
    );
}

#[test]
fn web_to_sip_no_answer_in_time_cancels_and_is_peer_no_response() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipProgress { code: 180 });
    let a = call.handle(Event::RingTimeout);
    assert_eq!(sip_actions(&a), vec![SipAction::Cancel]);
    assert_eq!(
        local_states(&a),
        vec![(LocalState::Failure, Some(FailureReason::PeerNoResponse))]
    );
    assert_eq!(call.phase(), Phase::Cancelling);
    // The INVITE then ends with 487; the call is released without telling the browser again.
    let a = call.handle(Event::SipFailed {
        code: 487,
        reason: "Request Terminated".into(),
    });
    assert!(local_states(&a).is_empty());
    assert_eq!(ended(&a), Some(EndReason::NoAnswer));
}

#[test]
fn web_to_sip_other_codes_are_failure_with_the_code() {
    for code in [403, 500, 503, 488, 606] {
        let (mut call, _) = outgoing("");
        let a = call.handle(Event::SipFailed {
            code,
            reason: "x".into(),
        });
        assert_eq!(
            local_states(&a),
            vec![(LocalState::Failure, Some(FailureReason::Other))],
            "{code}"
        );
    }
}

#[test]
fn web_to_sip_browser_cancel_sends_cancel_and_is_canceled() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipProgress { code: 180 });
    let a = call.handle(Event::BrowserCanceled);
    assert_eq!(sip_actions(&a), vec![SipAction::Cancel]);
    assert_eq!(local_states(&a), vec![(LocalState::Canceled, None)]);
    let a = call.handle(Event::SipFailed {
        code: 487,
        reason: "Request Terminated".into(),
    });
    assert_eq!(ended(&a), Some(EndReason::BrowserCanceled));
}

#[test]
fn web_to_sip_cancel_crossing_200_sends_bye() {
    let (mut call, _) = outgoing("");
    call.handle(Event::BrowserCanceled);
    let a = call.handle(Event::SipAnswered);
    assert_eq!(sip_actions(&a), vec![SipAction::Bye]);
    assert!(
        local_states(&a).is_empty(),
        "the browser already saw CANCELED"
    );
    assert_eq!(ended(&a), Some(EndReason::BrowserCanceled));
}

#[test]
fn web_to_sip_cancel_that_never_completes_is_released_by_the_guard_timer() {
    let (mut call, _) = outgoing("");
    let a = call.handle(Event::BrowserCanceled);
    assert!(a.contains(&Action::ArmRingTimer(CANCEL_GUARD)));
    let a = call.handle(Event::RingTimeout);
    assert_eq!(ended(&a), Some(EndReason::BrowserCanceled));
}

#[test]
fn web_to_sip_bye_from_phone_is_end_call_to_browser() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipAnswered);
    let a = call.handle(Event::SipHangup);
    assert_eq!(
        a,
        vec![
            Action::Hub(HubAction::EndCall),
            Action::Ended(EndReason::SipHangup)
        ]
    );
}

#[test]
fn web_to_sip_end_call_from_browser_is_bye() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipAnswered);
    let a = call.handle(Event::BrowserHangup);
    assert_eq!(sip_actions(&a), vec![SipAction::Bye]);
    assert_eq!(ended(&a), Some(EndReason::BrowserHangup));
}

#[test]
fn web_to_sip_websocket_closed_mid_call_is_bye() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipAnswered);
    assert_eq!(
        sip_actions(&call.handle(Event::BrowserGone)),
        vec![SipAction::Bye]
    );
}

#[test]
fn web_to_sip_websocket_closed_while_ringing_is_cancel() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipProgress { code: 180 });
    let a = call.handle(Event::BrowserGone);
    assert_eq!(sip_actions(&a), vec![SipAction::Cancel]);
    let a = call.handle(Event::SipFailed {
        code: 487,
        reason: String::new(),
    });
    assert_eq!(ended(&a), Some(EndReason::BrowserGone));
}

#[test]
fn web_to_sip_media_failure_ends_an_established_call_on_both_sides() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipAnswered);
    let a = call.handle(Event::MediaFailed);
    assert_eq!(sip_actions(&a), vec![SipAction::Bye]);
    assert!(a.contains(&Action::Hub(HubAction::EndCall)));
}

#[test]
fn numbers_outside_acc_rule_are_refused_with_a_reason() {
    let (call, a) = Call::web_to_sip("c1", "alice", "2000", "", &policy(None));
    assert!(sip_actions(&a).is_empty(), "no INVITE for a refused number");
    assert_eq!(
        local_states(&a),
        vec![(LocalState::Failure, Some(FailureReason::InvalidArgument))]
    );
    assert_eq!(
        ended(&a),
        Some(EndReason::Rejected("number not allowed by acc_rule"))
    );
    assert_eq!(call.phase(), Phase::Ended);
}

#[test]
fn malformed_numbers_are_refused() {
    for bad in ["", "10 05", "1005@evil.example", "<sip:x>", &"9".repeat(65)] {
        let (_, a) = Call::web_to_sip("c1", "alice", bad, "", &policy(Some("9")));
        assert!(sip_actions(&a).is_empty(), "{bad:?} must not be dialled");
    }
}

#[test]
fn pstn_content_dials_prefix_and_number_via_the_gateway() {
    let (_, a) = Call::web_to_sip(
        "c1",
        "alice",
        "13800000000",
        r#"{"Pstn":true,"UserData":"order-1","SipData":"5550100"}"#,
        &policy(Some("9")),
    );
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Invite {
            callee: "913800000000".into(),
            caller_id: "5550100".into(),
            headers: vec![("X-ArInfo".into(), "order-1".into())],
            via_pstn: true,
        }]
    );
    let (_, a) = Call::web_to_sip(
        "c1",
        "alice",
        "13800000000",
        r#"{"Pstn":true}"#,
        &policy(None),
    );
    assert!(sip_actions(&a).is_empty(), "no gateway configured");
}

fn incoming() -> (Call, Vec<Action>) {
    Call::sip_to_web("s1", "1001", Some("Desk"), "alice", &policy(None))
}

#[test]
fn sip_to_web_rings_the_browser_then_sends_180_after_delivery() {
    let (mut call, a) = incoming();
    assert!(
        sip_actions(&a).is_empty(),
        "no 180 before the browser has it"
    );
    let Some(Action::Hub(HubAction::SendRemoteInvitation {
        to_uid,
        caller,
        content,
    })) = a.first()
    else {
        panic!("{a:?}")
    };
    assert_eq!((to_uid.as_str(), caller.as_str()), ("alice", "1001"));
    assert!(content.contains("Desk"));
    assert_eq!(
        sip_actions(&call.handle(Event::InvitationDelivered)),
        vec![SipAction::Ringing]
    );
    assert!(call.handle(Event::InvitationDelivered).is_empty());
}

#[test]
fn sip_to_web_accept_is_200_and_never_before() {
    let (mut call, _) = incoming();
    call.handle(Event::InvitationDelivered);
    let a = call.handle(Event::BrowserAccepted);
    assert_eq!(sip_actions(&a), vec![SipAction::Answer]);
    assert!(a.contains(&Action::CancelRingTimer));
    assert!(
        call.handle(Event::BrowserAccepted).is_empty(),
        "duplicate accept"
    );
}

#[test]
fn sip_to_web_refuse_is_486_or_603_on_decline() {
    let (mut call, _) = incoming();
    call.handle(Event::InvitationDelivered);
    let a = call.handle(Event::BrowserRefused {
        response: String::new(),
    });
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Reject {
            code: 486,
            reason: "Busy Here"
        }]
    );
    let (mut call, _) = incoming();
    let a = call.handle(Event::BrowserRefused {
        response: r#"{"Decline":true}"#.into(),
    });
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Reject {
            code: 603,
            reason: "Decline"
        }]
    );
}

#[test]
fn sip_to_web_offline_is_480() {
    let (mut call, _) = incoming();
    let a = call.handle(Event::BrowserOffline);
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Reject {
            code: 480,
            reason: "Temporarily Unavailable"
        }]
    );
    assert_eq!(ended(&a), Some(EndReason::BrowserOffline));
}

#[test]
fn sip_to_web_no_answer_is_480_and_the_invitation_expires() {
    let (mut call, _) = incoming();
    call.handle(Event::InvitationDelivered);
    let a = call.handle(Event::RingTimeout);
    assert!(a.contains(&Action::Hub(HubAction::ExpireRemoteInvitation)));
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Reject {
            code: 480,
            reason: "No Answer"
        }]
    );
}

#[test]
fn sip_to_web_phone_cancel_is_canceled_at_the_browser() {
    let (mut call, _) = incoming();
    call.handle(Event::InvitationDelivered);
    let a = call.handle(Event::SipCanceled);
    assert_eq!(
        a,
        vec![
            Action::Hub(HubAction::CancelRemoteInvitation),
            Action::Ended(EndReason::SipCanceled)
        ]
    );
    assert!(
        call.handle(Event::BrowserAccepted).is_empty(),
        "accept after cancel"
    );
}

#[test]
fn sip_to_web_end_call_is_bye_and_bye_is_end_call() {
    let (mut call, _) = incoming();
    call.handle(Event::BrowserAccepted);
    assert_eq!(
        sip_actions(&call.handle(Event::BrowserHangup)),
        vec![SipAction::Bye]
    );

    let (mut call, _) = incoming();
    call.handle(Event::BrowserAccepted);
    let a = call.handle(Event::SipHangup);
    assert!(a.contains(&Action::Hub(HubAction::EndCall)));
    assert_eq!(ended(&a), Some(EndReason::SipHangup));
}

#[test]
fn sip_to_web_browser_gone_while_ringing_is_480() {
    let (mut call, _) = incoming();
    call.handle(Event::InvitationDelivered);
    let a = call.handle(Event::BrowserGone);
    assert_eq!(
        sip_actions(&a),
        vec![SipAction::Reject {
            code: 480,
            reason: "Temporarily Unavailable"
        }]
    );
}

#[test]
fn events_after_the_end_are_ignored() {
    let (mut call, _) = outgoing("");
    call.handle(Event::SipAnswered);
    call.handle(Event::SipHangup);
    for ev in [
        Event::SipHangup,
        Event::BrowserHangup,
        Event::SipAnswered,
        Event::RingTimeout,
        Event::MediaFailed,
    ] {
        assert!(call.handle(ev).is_empty());
    }
    assert_eq!(call.end_reason(), Some(&EndReason::SipHangup));
}
