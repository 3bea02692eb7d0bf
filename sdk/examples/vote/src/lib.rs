//! `vote`: a per-room poll whose tallies live in `kv`, so they survive instance
//! recycling and plugin reloads.
//!
//! - `{"svc":"vote","type":"cast","room":R,"data":{"option":"a"}}` (sender in R):
//!   counts one vote per user and room, then publishes
//!   `{"type":"tally","room":R,"data":{"room":R,"counts":{"a":1,..},"total":N}}`
//!   to every member of R (reliable).
//! - `{"svc":"vote","type":"tally","room":R}`: replies with the same tally.
//! - `{"svc":"vote","type":"reset","room":R}`: clears the poll and publishes it.
//!
//! - When a session that sent a vote message closes, the last room it used gets
//!   `{"type":"left","room":R,"data":{"room":R,"user":U}}` (reliable), from
//!   `on-disconnect`. The room is remembered per session in `kv`, because a
//!   closed session has left its rooms by the time the hook runs.
//!
//! Refusals: `NO_ROOM`, `NOT_IN_ROOM`, `BAD_OPTION`, `TOO_MANY_OPTIONS`,
//! `ALREADY_VOTED`, `UNKNOWN_TYPE`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wsprism_plugin::{Message, Plugin, Qos, Refusal, Session, export_plugin, kv, realtime};

/// Options a poll may have.
const MAX_OPTIONS: usize = 16;
/// How long a room's vote keys live without votes (a week).
const POLL_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Deserialize)]
struct Cast {
    option: String,
}

#[derive(Serialize)]
struct Tally<'a> {
    room: &'a str,
    counts: BTreeMap<String, i64>,
    total: i64,
}

fn options_key(room: &str) -> String {
    format!("poll:{room}:options")
}

fn count_key(room: &str, option: &str) -> String {
    format!("poll:{room}:count:{option}")
}

fn voter_key(room: &str, user: &str) -> String {
    format!("poll:{room}:voter:{user}")
}

/// The last room a session sent a vote message in (for its `left` notice).
fn session_room_key(sid: u64) -> String {
    format!("session:{sid}:room")
}

/// A session's room record outlives a dropped `on-disconnect` by at most a day.
const SESSION_TTL_MS: u64 = 24 * 3600 * 1000;

#[derive(Serialize)]
struct Left<'a> {
    room: &'a str,
    user: &'a str,
}

fn tally(room: &str) -> Result<Tally<'_>, Refusal> {
    let options: Vec<String> = kv::get_json(&options_key(room))?.unwrap_or_default();
    let mut counts = BTreeMap::new();
    for o in options {
        let n = kv::get(&count_key(room, &o))?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        counts.insert(o, n);
    }
    let total = counts.values().sum();
    Ok(Tally { room, counts, total })
}

struct Vote;

impl Plugin for Vote {
    fn on_message(session: &Session, msg: Message) -> Result<(), Refusal> {
        let Some(room) = msg.room.as_deref() else {
            return Err(Refusal::new("NO_ROOM", "vote messages need a room"));
        };
        if !session.in_room(room) {
            return Err(Refusal::new("NOT_IN_ROOM", "join the room first"));
        }
        kv::set(&session_room_key(session.sid()), room, Some(SESSION_TTL_MS))?;
        match msg.type_.as_str() {
            "cast" => {
                let cast: Cast = msg.json()?;
                let option = cast.option;
                if option.is_empty()
                    || option.len() > 32
                    || !option.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(Refusal::new("BAD_OPTION", "option must be 1-32 of [A-Za-z0-9_-]"));
                }
                let user = session.user();
                if kv::incr(&voter_key(room, &user), 1)? > 1 {
                    return Err(Refusal::new("ALREADY_VOTED", "one vote per user and room"));
                }
                let mut options: Vec<String> = kv::get_json(&options_key(room))?.unwrap_or_default();
                if !options.contains(&option) {
                    if options.len() >= MAX_OPTIONS {
                        kv::delete(&voter_key(room, &user))?;
                        return Err(Refusal::new("TOO_MANY_OPTIONS", "this poll is full"));
                    }
                    options.push(option.clone());
                    kv::set_json(&options_key(room), &options, Some(POLL_TTL_MS))?;
                }
                kv::incr(&count_key(room, &option), 1)?;
                realtime::publish(room, "tally", &tally(room)?, Qos::Reliable, false)?;
            }
            "tally" => realtime::reply("tally", &tally(room)?)?,
            "reset" => {
                let options: Vec<String> = kv::get_json(&options_key(room))?.unwrap_or_default();
                for o in &options {
                    kv::delete(&count_key(room, o))?;
                }
                kv::delete(&options_key(room))?;
                for user in realtime::members(room)? {
                    kv::delete(&voter_key(room, &user))?;
                }
                realtime::publish(room, "tally", &tally(room)?, Qos::Reliable, false)?;
            }
            other => {
                return Err(Refusal::new("UNKNOWN_TYPE", format!("unknown type `{other}`")));
            }
        }
        Ok(())
    }

    /// Tells the session's last room that its user left.
    fn on_disconnect(session: &Session) {
        let key = session_room_key(session.sid());
        if let Ok(Some(room)) = kv::get(&key) {
            let left = Left {
                room: &room,
                user: &session.user(),
            };
            let _ = realtime::publish(&room, "left", &left, Qos::Reliable, false);
            let _ = kv::delete(&key);
        }
    }
}

export_plugin!(Vote);
