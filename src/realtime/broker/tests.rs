use super::*;
use tungstenite::Utf8Bytes;

/// The session id numbered `n`.
const fn id(n: u64) -> SessionId {
    SessionId::new(n)
}

fn session(
    b: &LocalBroker,
    sid: u64,
    user: &str,
    limits: SessionLimits,
) -> Result<Vec<SessionId>, RegisterError> {
    let entry = Arc::new(SessionEntry::new(
        id(sid),
        Arc::from(user),
        Arc::new(Outbox::new(8, 8)),
    ));
    b.register(entry, limits)
        .map(|k| k.iter().map(|s| s.sid).collect())
}

const OPEN: SessionLimits = SessionLimits {
    max_sessions_total: 0,
    max_sessions_per_user: 4,
    kick_oldest: false,
};

fn msg(s: &str) -> Message {
    Message::Text(Utf8Bytes::from(s.to_owned()))
}

#[test]
fn closing_sessions_do_not_count_against_the_user_cap() {
    let b = LocalBroker::new();
    let deny = SessionLimits {
        max_sessions_per_user: 2,
        ..OPEN
    };
    assert_eq!(session(&b, 1, "u", deny), Ok(vec![]));
    assert_eq!(session(&b, 2, "u", deny), Ok(vec![]));
    b.session(id(1))
        .expect("s1")
        .outbox
        .close(CloseCode::Normal, "bye", false);
    assert_eq!(session(&b, 3, "u", deny), Ok(vec![]), "s1 is closing");
    assert_eq!(session(&b, 4, "u", deny), Err(RegisterError::UserLimit));
    // A session that unregistered leaves the list as well.
    b.unregister(id(2));
    assert_eq!(session(&b, 5, "u", deny), Ok(vec![]));
}

#[test]
fn per_user_cap_denies_or_kicks_oldest() {
    let b = LocalBroker::new();
    let deny = SessionLimits {
        max_sessions_per_user: 2,
        ..OPEN
    };
    assert_eq!(session(&b, 1, "u", deny), Ok(vec![]));
    assert_eq!(session(&b, 2, "u", deny), Ok(vec![]));
    assert_eq!(session(&b, 3, "u", deny), Err(RegisterError::UserLimit));
    assert_eq!(session(&b, 4, "other", deny), Ok(vec![]));
    let kick = SessionLimits {
        kick_oldest: true,
        ..deny
    };
    assert_eq!(session(&b, 5, "u", kick), Ok(vec![id(1)]));
    assert_eq!(
        b.stats().sessions,
        4,
        "the kicked session stays until it unregisters"
    );
    b.unregister(id(1));
    assert_eq!(
        b.stats(),
        TenantStats {
            sessions: 3,
            users: 2,
            rooms: 0
        }
    );
}

#[test]
fn tenant_cap_counts_every_user() {
    let b = LocalBroker::new();
    let capped = SessionLimits {
        max_sessions_total: 2,
        ..OPEN
    };
    assert!(session(&b, 1, "a", capped).is_ok());
    assert!(session(&b, 2, "b", capped).is_ok());
    assert_eq!(session(&b, 3, "c", capped), Err(RegisterError::TenantFull));
    b.unregister(id(2));
    assert!(session(&b, 3, "c", capped).is_ok());
}

#[test]
fn rooms_assign_peers_track_active_room_and_vanish_when_empty() {
    let b = LocalBroker::new();
    session(&b, 1, "a", OPEN).ok();
    session(&b, 2, "b", OPEN).ok();
    let lim = RoomLimits::default();
    let j1 = b.join(id(1), "r", lim).expect("join");
    let j2 = b.join(id(2), "r", lim).expect("join");
    assert_eq!((j1.peer, j1.members), (1, 1));
    assert_eq!((j2.peer, j2.members), (2, 2));
    b.join(id(1), "s", lim).expect("join s");
    assert_eq!(
        b.session(id(1))
            .and_then(|s| s.active_room())
            .map(|r| r.0.to_string()),
        Some("s".into())
    );
    // Re-joining is idempotent and re-activates the room.
    let again = b.join(id(1), "r", lim).expect("rejoin");
    assert_eq!((again.peer, again.new), (1, false));
    assert_eq!(
        b.session(id(1)).and_then(|s| s.active_room()).map(|r| r.1),
        Some(1)
    );
    assert_eq!(b.presence("r"), vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(b.leave(id(2), "r"), Ok(2));
    assert_eq!(b.leave(id(2), "r"), Err(RoomError::NotInRoom));
    assert_eq!(b.stats().rooms, 2);
    let left = b.unregister(id(1));
    assert_eq!(left.len(), 2);
    assert_eq!(b.stats().rooms, 0);
}

#[test]
fn room_limits_are_enforced() {
    let b = LocalBroker::new();
    for sid in 1..=3 {
        session(&b, sid, &format!("u{sid}"), OPEN).ok();
    }
    let lim = RoomLimits {
        max_rooms_total: 2,
        max_users_per_room: 2,
        max_rooms_per_user: 2,
    };
    b.join(id(1), "a", lim).expect("a");
    b.join(id(2), "a", lim).expect("a");
    assert_eq!(b.join(id(3), "a", lim), Err(RoomError::RoomFull));
    b.join(id(1), "b", lim).expect("b");
    assert_eq!(
        b.join(id(1), "c", lim),
        Err(RoomError::RoomLimit),
        "per-user cap"
    );
    assert_eq!(
        b.join(id(3), "c", lim),
        Err(RoomError::RoomLimit),
        "room total cap"
    );
    // A full-room refusal of a brand-new room must not leak an empty room.
    let one = RoomLimits {
        max_users_per_room: 0,
        ..RoomLimits::default()
    };
    b.join(id(3), "d", one).expect("d");
    assert_eq!(b.stats().rooms, 3);
}

#[tokio::test]
async fn publish_shares_one_frame_and_respects_exclude() {
    let b = LocalBroker::new();
    for sid in 1..=3 {
        session(&b, sid, &format!("u{sid}"), OPEN).ok();
        b.join(id(sid), "r", RoomLimits::default()).expect("join");
    }
    let m = msg("hello");
    let d = b.publish("r", &m, Qos::Reliable, Some(id(1)));
    assert_eq!(d.delivered, 2);
    assert_eq!(b.publish("nope", &m, Qos::Reliable, None).delivered, 0);
    let s1 = b.session(id(1)).expect("s1");
    let s2 = b.session(id(2)).expect("s2");
    assert_eq!(s1.outbox.depth(), (0, 0));
    assert_eq!(s2.outbox.depth(), (1, 0));
    assert_eq!(b.send_to_user("u3", &m, Qos::Lossy).delivered, 1);
    assert_eq!(b.disconnect_user("u3", None, CloseCode::Disconnected), 1);
    assert!(b.session(id(3)).expect("s3").outbox.is_closing());
}

#[test]
fn a_sessions_rooms_keep_join_order_and_the_active_room() {
    let b = LocalBroker::new();
    session(&b, 1, "u", OPEN).expect("register");
    let entry = b.session(id(1)).expect("entry");
    let limits = RoomLimits::default();
    for r in ["a", "b", "c"] {
        b.join(id(1), r, limits).expect("join");
    }
    assert_eq!(entry.rooms(), ["a", "b", "c"]);
    assert_eq!(
        entry.active_room().map(|(r, _)| r.to_string()),
        Some("c".into())
    );
    // A join of a room already joined makes it active again, same peer.
    let peer_a = entry.active_room();
    let again = b.join(id(1), "a", limits).expect("rejoin");
    assert!(!again.new);
    assert_eq!(entry.rooms(), ["b", "c", "a"]);
    assert_ne!(entry.active_room(), peer_a);
    assert_eq!(entry.active_room().map(|(_, p)| p), Some(again.peer));
    // Leaving the active room makes the previous one active.
    b.leave(id(1), "a").expect("leave");
    assert_eq!(
        entry.active_room().map(|(r, _)| r.to_string()),
        Some("c".into())
    );
    assert!(entry.in_room("b") && !entry.in_room("a"));
    assert_eq!(b.leave(id(1), "a"), Err(RoomError::NotInRoom));
    let left = b.unregister(id(1));
    let names: Vec<&str> = left.iter().map(|(r, _)| &**r).collect();
    assert_eq!(names, ["b", "c"], "rooms left in join order");
}

#[test]
fn the_room_caps_refuse_past_their_limit() {
    let b = LocalBroker::new();
    session(&b, 1, "u", OPEN).expect("register");
    let per_user = RoomLimits {
        max_rooms_per_user: 3,
        ..RoomLimits::default()
    };
    for r in 0..3 {
        b.join(id(1), &format!("r{r}"), per_user).expect("join");
    }
    assert_eq!(b.join(id(1), "r3", per_user), Err(RoomError::RoomLimit));
    assert!(
        b.join(id(1), "r0", per_user).is_ok(),
        "a rejoin is not a new room"
    );
}

#[test]
fn presence_answers_are_capped_with_a_flag() {
    let users: Vec<String> = (0..PRESENCE_CAP + 5).map(|i| format!("u{i:05}")).collect();
    let (kept, truncated) = capped(users.clone());
    assert!(truncated);
    assert_eq!(kept.len(), PRESENCE_CAP);
    assert_eq!(kept[..], users[..PRESENCE_CAP]);
    let (kept, truncated) = capped(users[..10].to_vec());
    assert!(!truncated);
    assert_eq!(kept.len(), 10);
}

/// Issue 11 item 9: concurrent connects of different users cannot overshoot
/// the tenant cap (the check and the count are one atomic step).
#[test]
fn tenant_cap_holds_under_concurrent_registration() {
    let b = Arc::new(LocalBroker::new());
    let capped = SessionLimits {
        max_sessions_total: 10,
        ..OPEN
    };
    let start = Arc::new(std::sync::Barrier::new(64));
    let threads: Vec<_> = (0..64u64)
        .map(|n| {
            let (b, start) = (Arc::clone(&b), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                session(&b, n + 1, &format!("user-{n}"), capped).is_ok()
            })
        })
        .collect();
    let admitted = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    assert_eq!(admitted, 10);
    assert_eq!(b.stats().sessions, 10);
}
