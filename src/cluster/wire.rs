//! The bus wire format: what one node publishes on a room or user channel for
//! the others.
//!
//! A bus message carries a frame already encoded for clients, so a receiving
//! node decodes nothing but this header and hands one shared copy of the bytes
//! to every local recipient. Layout (little endian):
//!
//! ```text
//! [version=1][kind][origin: u64]  then, by kind:
//!   1 room frame, 2 user frame:  [qos: 0 lossy | 1 reliable][frame: 0 text | 1 binary][payload…]
//!   3 user disconnect:           [close code: u16][notice: 0 none | 1 text][payload…]
//!   4 room resync:               (nothing)
//!   5 member joined:             [peer: u32][node id length: u8][node id][user…]
//!   6 member left:               [peer: u32]
//!   7 kick (4001):               [session members, newline separated]
//!   8 recorded room frame:       [excluded session: u64, 0 none][text payload…]
//!   9 latest-wins room frame:    [conflation key: u64][frame: 0 text | 1 binary][payload…]
//! ```
//!
//! `origin` is the publishing node's process nonce: a node receives its own
//! publications back from Redis and skips them (it delivered locally at once),
//! except recorded ones (kind 8): Redis assigns their offsets and publishes
//! them, so every node, the publisher included, delivers them in Redis's
//! order; the excluded session is one of the publisher's.

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;

use crate::error::CloseCode;
use crate::realtime::outbox::Qos;

const VERSION: u8 = 1;
const HEADER: usize = 10;

/// One message on the bus.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BusMessage {
    /// A frame for every local member of the channel's room.
    Room {
        /// Delivery class.
        qos: Qos,
        /// The client frame.
        frame: Message,
    },
    /// A frame for every local session of the channel's user.
    User {
        /// Delivery class.
        qos: Qos,
        /// The client frame.
        frame: Message,
    },
    /// Close every local session of the channel's user.
    Disconnect {
        /// The close code sent.
        code: CloseCode,
        /// A frame queued before the close.
        notice: Option<Message>,
    },
    /// The publisher lost publications to the channel's room (its Redis link
    /// was down): every local member gets `sys.resync`.
    Resync,
    /// A session of node `node` joined the channel's room as `peer`.
    Joined {
        /// Peer number (unique in the room across nodes).
        peer: u32,
        /// The node the session is on.
        node: String,
        /// The session's user.
        user: String,
    },
    /// The member `peer` left the channel's room.
    Left {
        /// Peer number.
        peer: u32,
    },
    /// A reliable room frame with a history offset and epoch assigned by
    /// Redis (README "Cluster"), for every node including the publisher.
    Recorded {
        /// The publisher's session that does not get it (0: none).
        exclude: u64,
        /// The client frame (text: it carries `offset` and `epoch`).
        frame: Message,
    },
    /// A lossy frame for every local member of the channel's room that
    /// replaces a queued one with the same conflation key (SPEC §6).
    Latest {
        /// The conflation key.
        key: u64,
        /// The client frame.
        frame: Message,
    },
    /// Replace these sessions of the channel's user (`<node>/<sid>` each):
    /// `sys.kicked`, then Close 4001.
    Kick {
        /// The sessions, each on the node its member names.
        members: Vec<String>,
    },
}

/// Why a bus payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Shorter than its header.
    #[error("truncated bus message")]
    Truncated,
    /// Written by a newer (or unknown) format.
    #[error("unknown bus message version {0}")]
    Version(u8),
    /// Unknown kind, QoS, frame type or close code.
    #[error("malformed bus message")]
    Malformed,
    /// A text frame that is not UTF-8.
    #[error("bus text frame is not UTF-8")]
    Utf8,
}

impl BusMessage {
    /// Encodes the message as published by node `origin`.
    pub(crate) fn encode(&self, origin: u64) -> Vec<u8> {
        let (kind, a, b, payload): (u8, u8, u8, &[u8]) = match self {
            Self::Room { qos, frame } | Self::User { qos, frame } => {
                let kind = if matches!(self, Self::Room { .. }) {
                    1
                } else {
                    2
                };
                let (ty, bytes) = frame_parts(frame);
                (kind, qos_byte(*qos), ty, bytes)
            }
            Self::Disconnect { code, notice } => {
                let [lo, hi] = code.code().to_le_bytes();
                let payload = notice.as_ref().map_or(&[][..], |n| frame_parts(n).1);
                let mut buf = BytesMut::with_capacity(HEADER + 3 + payload.len());
                header(&mut buf, 3, origin);
                buf.put_u8(lo);
                buf.put_u8(hi);
                buf.put_u8(u8::from(notice.is_some()));
                buf.put_slice(payload);
                return buf.to_vec();
            }
            Self::Resync => {
                let mut buf = BytesMut::with_capacity(HEADER);
                header(&mut buf, 4, origin);
                return buf.to_vec();
            }
            Self::Joined { peer, node, user } => {
                let node = &node.as_bytes()[..node.len().min(255)];
                let mut buf = BytesMut::with_capacity(HEADER + 5 + node.len() + user.len());
                header(&mut buf, 5, origin);
                buf.put_u32_le(*peer);
                buf.put_u8(node.len() as u8);
                buf.put_slice(node);
                buf.put_slice(user.as_bytes());
                return buf.to_vec();
            }
            Self::Left { peer } => {
                let mut buf = BytesMut::with_capacity(HEADER + 4);
                header(&mut buf, 6, origin);
                buf.put_u32_le(*peer);
                return buf.to_vec();
            }
            Self::Recorded { exclude, frame } => {
                let payload = frame_parts(frame).1;
                let mut buf = BytesMut::with_capacity(HEADER + 8 + payload.len());
                header(&mut buf, 8, origin);
                buf.put_u64_le(*exclude);
                buf.put_slice(payload);
                return buf.to_vec();
            }
            Self::Latest { key, frame } => {
                let (ty, payload) = frame_parts(frame);
                let mut buf = BytesMut::with_capacity(HEADER + 9 + payload.len());
                header(&mut buf, 9, origin);
                buf.put_u64_le(*key);
                buf.put_u8(ty);
                buf.put_slice(payload);
                return buf.to_vec();
            }
            Self::Kick { members } => {
                let body = members.join("\n");
                let mut buf = BytesMut::with_capacity(HEADER + body.len());
                header(&mut buf, 7, origin);
                buf.put_slice(body.as_bytes());
                return buf.to_vec();
            }
        };
        let mut buf = BytesMut::with_capacity(HEADER + 2 + payload.len());
        header(&mut buf, kind, origin);
        buf.put_u8(a);
        buf.put_u8(b);
        buf.put_slice(payload);
        buf.to_vec()
    }

    /// Decodes a payload read from the bus; returns the origin node and the
    /// message. The frame shares `raw`'s buffer.
    ///
    /// # Errors
    /// [`WireError`] for anything this version did not write.
    pub(crate) fn decode(raw: Bytes) -> Result<(u64, Self), WireError> {
        if raw.len() < HEADER {
            return Err(WireError::Truncated);
        }
        if raw[0] != VERSION {
            return Err(WireError::Version(raw[0]));
        }
        let kind = raw[1];
        let mut origin = [0u8; 8];
        origin.copy_from_slice(&raw[2..HEADER]);
        let origin = u64::from_le_bytes(origin);
        let msg = match kind {
            1 | 2 => {
                if raw.len() < HEADER + 2 {
                    return Err(WireError::Truncated);
                }
                let qos = match raw[HEADER] {
                    0 => Qos::Lossy,
                    1 => Qos::Reliable,
                    _ => return Err(WireError::Malformed),
                };
                let frame = frame(raw[HEADER + 1], raw.slice(HEADER + 2..))?;
                if kind == 1 {
                    Self::Room { qos, frame }
                } else {
                    Self::User { qos, frame }
                }
            }
            3 => {
                if raw.len() < HEADER + 3 {
                    return Err(WireError::Truncated);
                }
                let code = u16::from_le_bytes([raw[HEADER], raw[HEADER + 1]]);
                let code = CloseCode::from_code(code).ok_or(WireError::Malformed)?;
                let notice = match raw[HEADER + 2] {
                    0 => None,
                    1 => Some(frame(0, raw.slice(HEADER + 3..))?),
                    _ => return Err(WireError::Malformed),
                };
                Self::Disconnect { code, notice }
            }
            4 => Self::Resync,
            5 => {
                let body = &raw[HEADER..];
                if body.len() < 5 || body.len() < 5 + usize::from(body[4]) {
                    return Err(WireError::Truncated);
                }
                let node_end = 5 + usize::from(body[4]);
                let text = |b: &[u8]| {
                    std::str::from_utf8(b)
                        .map(str::to_owned)
                        .map_err(|_| WireError::Utf8)
                };
                Self::Joined {
                    peer: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
                    node: text(&body[5..node_end])?,
                    user: text(&body[node_end..])?,
                }
            }
            7 => {
                let body = std::str::from_utf8(&raw[HEADER..]).map_err(|_| WireError::Utf8)?;
                Self::Kick {
                    members: body
                        .split('\n')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect(),
                }
            }
            8 => {
                if raw.len() < HEADER + 8 {
                    return Err(WireError::Truncated);
                }
                let mut exclude = [0u8; 8];
                exclude.copy_from_slice(&raw[HEADER..HEADER + 8]);
                Self::Recorded {
                    exclude: u64::from_le_bytes(exclude),
                    frame: frame(0, raw.slice(HEADER + 8..))?,
                }
            }
            9 => {
                if raw.len() < HEADER + 9 {
                    return Err(WireError::Truncated);
                }
                let mut key = [0u8; 8];
                key.copy_from_slice(&raw[HEADER..HEADER + 8]);
                Self::Latest {
                    key: u64::from_le_bytes(key),
                    frame: frame(raw[HEADER + 8], raw.slice(HEADER + 9..))?,
                }
            }
            6 => {
                let body = &raw[HEADER..];
                if body.len() < 4 {
                    return Err(WireError::Truncated);
                }
                Self::Left {
                    peer: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
                }
            }
            _ => return Err(WireError::Malformed),
        };
        Ok((origin, msg))
    }
}

/// A recorded publication's bus payload with holes for the offset and the
/// epoch, which only Redis knows: `head`, offset digits, `middle`, epoch,
/// `tail` (the script that assigns them concatenates the parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedTemplate {
    /// The bus header and the frame up to the offset digits.
    pub head: Vec<u8>,
    /// Between the offset digits and the epoch.
    pub middle: String,
    /// After the epoch.
    pub tail: String,
}

/// Stand-ins the encoder is asked to write, found again to cut the frame.
const OFFSET_MARK: u64 = u64::MAX;
const EPOCH_MARK: &str = "0000000000000000";

impl RecordedTemplate {
    /// Cuts the frame `encode` builds (offset and epoch as in
    /// [`crate::protocol::ext::Outgoing`]: `"offset":N,"epoch":"E"` before
    /// any `data`) into a template; `None` when the frame has no such pair.
    pub(crate) fn new(
        origin: u64,
        exclude: u64,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Option<Self> {
        let Message::Text(text) = encode(OFFSET_MARK, EPOCH_MARK) else {
            return None;
        };
        let text = text.as_str();
        // Field names are quoted and string values escape quotes, so the
        // first `"offset":` is the envelope's own.
        let key = "\"offset\":";
        let at = text.find(key)? + key.len();
        let digits = OFFSET_MARK.to_string();
        let rest = text[at..].strip_prefix(digits.as_str())?;
        let middle = ",\"epoch\":\"";
        let after = rest.strip_prefix(middle)?.strip_prefix(EPOCH_MARK)?;
        let mut head = BusMessage::Recorded {
            exclude,
            frame: Message::text(&text[..at]),
        }
        .encode(origin);
        head.shrink_to_fit();
        Some(Self {
            head,
            middle: middle.to_owned(),
            tail: after.to_owned(),
        })
    }

    /// The frame for `offset` and `epoch` (what Redis would publish),
    /// without the bus header.
    pub(crate) fn frame(&self, offset: u64, epoch: &str) -> Message {
        let head = std::str::from_utf8(&self.head[HEADER + 8..]).unwrap_or_default();
        Message::text(format!("{head}{offset}{}{epoch}{}", self.middle, self.tail))
    }
}

/// The offset and epoch of a recorded frame (see [`RecordedTemplate`]).
pub(crate) fn recorded_position(frame: &Message) -> Option<(u64, &str)> {
    let Message::Text(text) = frame else {
        return None;
    };
    let text = text.as_str();
    let key = "\"offset\":";
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let offset = rest[..end].parse().ok()?;
    let epoch = rest[end..].strip_prefix(",\"epoch\":\"")?;
    let epoch = &epoch[..epoch.find('"')?];
    Some((offset, epoch))
}

fn header(buf: &mut BytesMut, kind: u8, origin: u64) {
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u64_le(origin);
}

fn qos_byte(qos: Qos) -> u8 {
    match qos {
        Qos::Lossy => 0,
        Qos::Reliable => 1,
    }
}

/// The frame type byte and payload of a data frame; control frames never
/// travel on the bus (they encode as an empty text frame).
fn frame_parts(frame: &Message) -> (u8, &[u8]) {
    match frame {
        Message::Text(t) => (0, t.as_bytes()),
        Message::Binary(b) => (1, b),
        _ => (0, &[]),
    }
}

fn frame(ty: u8, payload: Bytes) -> Result<Message, WireError> {
    match ty {
        0 => Utf8Bytes::try_from(payload)
            .map(Message::Text)
            .map_err(|_| WireError::Utf8),
        1 => Ok(Message::Binary(payload)),
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: BusMessage) {
        let raw = Bytes::from(m.encode(0xdead_beef));
        assert_eq!(BusMessage::decode(raw), Ok((0xdead_beef, m)));
    }

    #[test]
    fn recorded_frames_are_cut_around_offset_and_epoch() {
        let encode = |offset: u64, epoch: &str| {
            crate::protocol::ext::Outgoing::new("chat", "msg")
                .room(Some("r\"offset\":1"))
                .offset(Some(offset))
                .epoch(Some(epoch))
                .data(Some(&crate::protocol::ext::raw(
                    &serde_json::json!({"offset": 5, "epoch": "x"}),
                )))
                .encode()
        };
        let t = RecordedTemplate::new(9, 42, &encode).expect("template");
        assert_eq!(
            t.frame(17, "abcdef0123456789"),
            encode(17, "abcdef0123456789")
        );
        // What the script publishes decodes as the frame Redis numbered.
        let mut payload = t.head.clone();
        payload.extend_from_slice(format!("17{}e1{}", t.middle, t.tail).as_bytes());
        let (origin, msg) = BusMessage::decode(Bytes::from(payload)).expect("decode");
        assert_eq!(origin, 9);
        let BusMessage::Recorded { exclude, frame } = msg else {
            panic!("{msg:?}");
        };
        assert_eq!(exclude, 42);
        assert_eq!(frame, encode(17, "e1"));
        assert_eq!(recorded_position(&frame), Some((17, "e1")));
        // No offset in the frame: nothing to cut.
        assert_eq!(
            RecordedTemplate::new(9, 0, &|_, _| Message::text(r#"{"v":1}"#)),
            None
        );
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(BusMessage::Room {
            qos: Qos::Reliable,
            frame: Message::text(r#"{"v":1,"svc":"chat"}"#),
        });
        round_trip(BusMessage::Room {
            qos: Qos::Lossy,
            frame: Message::binary(vec![7, 1, 0x80, 0, 0, 0, 9]),
        });
        round_trip(BusMessage::User {
            qos: Qos::Reliable,
            frame: Message::text("{}"),
        });
        round_trip(BusMessage::Disconnect {
            code: CloseCode::Disconnected,
            notice: Some(Message::text(r#"{"type":"disconnected"}"#)),
        });
        round_trip(BusMessage::Disconnect {
            code: CloseCode::Replaced,
            notice: None,
        });
        round_trip(BusMessage::Resync);
        round_trip(BusMessage::Joined {
            peer: 3 << 22 | 7,
            node: "edge-1".into(),
            user: "user:élan".into(),
        });
        round_trip(BusMessage::Left { peer: 9 });
        round_trip(BusMessage::Latest {
            key: 0x1234_5678_9abc_def0,
            frame: Message::binary(vec![1, 2, 0, 9, 9]),
        });
        round_trip(BusMessage::Recorded {
            exclude: 7,
            frame: Message::text(r#"{"v":1,"offset":3,"epoch":"e"}"#),
        });
        round_trip(BusMessage::Kick {
            members: vec!["edge-1/7".into(), "edge-2/42".into()],
        });
    }

    #[test]
    fn foreign_or_broken_payloads_are_refused() {
        let good = BusMessage::Room {
            qos: Qos::Reliable,
            frame: Message::text("hi"),
        }
        .encode(1);
        assert_eq!(
            BusMessage::decode(Bytes::from_static(b"PING")),
            Err(WireError::Truncated)
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            BusMessage::decode(Bytes::from(v2)),
            Err(WireError::Version(2))
        );
        let mut kind = good.clone();
        kind[1] = 200;
        assert_eq!(
            BusMessage::decode(Bytes::from(kind)),
            Err(WireError::Malformed)
        );
        let mut utf8 = good.clone();
        utf8.push(0xff);
        assert_eq!(BusMessage::decode(Bytes::from(utf8)), Err(WireError::Utf8));
        let mut code = BusMessage::Disconnect {
            code: CloseCode::Disconnected,
            notice: None,
        }
        .encode(1);
        code[HEADER] = 0x39; // 0x0f39 = 3897, not a close code of ours
        code[HEADER + 1] = 0x0f;
        assert_eq!(
            BusMessage::decode(Bytes::from(code)),
            Err(WireError::Malformed)
        );
    }
}
