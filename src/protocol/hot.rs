//! Hot Lane binary frames (README "Hot Lane"): `[svc_id u8][opcode u8][flags u8][payload]`.
//!
//! Decoding borrows the frame's `Bytes`; nothing here allocates except
//! [`stamp`], which builds the one shared frame a relay sends to every recipient.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 3;
/// Flag bit set by the gateway on frames it stamped with the sender's peer number.
pub const FLAG_STAMPED: u8 = 0x80;

/// A decoded Hot Lane frame; `frame` is the whole original frame (header included)
/// so unstamped relays forward it without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotFrame {
    /// Native service id.
    pub svc_id: u8,
    /// Service-defined opcode.
    pub opcode: u8,
    /// Client flags (opaque to the gateway).
    pub flags: u8,
    /// The full frame as received.
    pub frame: Bytes,
}

impl HotFrame {
    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.frame[HEADER_LEN..]
    }
}

/// Why a binary frame is not a Hot Lane frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotDecodeError {
    /// Fewer than three bytes.
    TooShort,
}

/// Decodes one binary frame.
///
/// # Errors
/// [`HotDecodeError::TooShort`] when the header is incomplete.
#[inline]
pub fn decode(frame: Bytes) -> Result<HotFrame, HotDecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(HotDecodeError::TooShort);
    }
    Ok(HotFrame {
        svc_id: frame[0],
        opcode: frame[1],
        flags: frame[2],
        frame,
    })
}

/// Builds `[svc_id][opcode][flags|0x80][peer u32 LE][payload]` once per relay.
pub fn stamp(frame: &HotFrame, peer: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.frame.len() + 4);
    out.put_u8(frame.svc_id);
    out.put_u8(frame.opcode);
    out.put_u8(frame.flags | FLAG_STAMPED);
    out.put_u32_le(peer);
    out.put_slice(frame.payload());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_header_and_keeps_frame() {
        let f = decode(Bytes::from_static(&[1, 10, 0x05, 0xAA, 0xBB])).expect("valid");
        assert_eq!((f.svc_id, f.opcode, f.flags), (1, 10, 5));
        assert_eq!(f.payload(), &[0xAA, 0xBB]);
        assert_eq!(
            decode(Bytes::from_static(&[1, 2, 3])).map(|f| f.payload().len()),
            Ok(0)
        );
    }

    #[test]
    fn short_frames_are_refused() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                decode(Bytes::from(vec![0; n])),
                Err(HotDecodeError::TooShort)
            );
        }
    }

    #[test]
    fn stamping_sets_flag_and_inserts_peer_le() {
        let f = decode(Bytes::from_static(&[7, 3, 0x01, 9, 9])).expect("valid");
        let s = stamp(&f, 0x0102_0304);
        assert_eq!(&s[..], &[7, 3, 0x81, 0x04, 0x03, 0x02, 0x01, 9, 9]);
    }
}
