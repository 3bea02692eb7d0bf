//! Hot Lane frame decoder and sender stamping: any bytes decode or are refused
//! as too short; a decoded frame keeps its bytes, and stamping inserts exactly
//! the flag bit and the peer number.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wsprism::protocol::hot::{self, FLAG_STAMPED, HEADER_LEN, HotDecodeError};

fuzz_target!(|data: &[u8]| {
    let peer = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match hot::decode(Bytes::copy_from_slice(data)) {
        Ok(f) => {
            assert!(data.len() >= HEADER_LEN);
            assert_eq!(&f.frame[..], data);
            assert_eq!((f.svc_id, f.opcode, f.flags), (data[0], data[1], data[2]));
            assert_eq!(f.payload(), &data[HEADER_LEN..]);
            let s = hot::stamp(&f, peer);
            assert_eq!(s.len(), data.len() + 4);
            assert_eq!((s[0], s[1], s[2]), (data[0], data[1], data[2] | FLAG_STAMPED));
            assert_eq!(&s[3..7], &peer.to_le_bytes());
            assert_eq!(&s[7..], &data[HEADER_LEN..]);
        }
        Err(HotDecodeError::TooShort) => assert!(data.len() < HEADER_LEN),
    }
});
