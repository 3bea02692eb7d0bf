/**
 * Hot Lane binary frames (SPEC §5): `[svc_id u8][opcode u8][flags u8][payload]`.
 *
 * Owns: encoding client frames and decoding gateway frames. No I/O.
 *
 * Gateway → client frames with bit 0x80 of `flags` set were stamped by a relay
 * (`stamp_sender: true`): `[svc_id][opcode][flags|0x80][peer u32 LE][payload]`,
 * where `peer` is the sender's number in the room (`peer` of its `sys.joined`).
 * The bit is the gateway's, so `encodeHot` refuses it.
 */

/** Bit of `flags` that marks a stamped frame on gateway → client frames. */
export const STAMPED_FLAG = 0x80;

/** Header bytes: svc_id, opcode, flags. */
const HEADER_BYTES = 3;
/** The stamped peer number, u32 little-endian. */
const PEER_BYTES = 4;

/** One decoded gateway → client Hot Lane frame. */
export interface HotFrame {
  svcId: number;
  opcode: number;
  /** The sender's flags, without the gateway's stamp bit. */
  flags: number;
  /** The sender's peer number in the room, when the relay stamped the frame. */
  peer: number | undefined;
  /** The payload; a view into the received bytes. */
  payload: Uint8Array;
}

/** Bytes accepted as a payload. */
export type HotPayload = Uint8Array | ArrayBuffer | readonly number[];

function checkByte(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xff) {
    throw new RangeError(`${name} must be an integer 0..255, got ${v}`);
  }
}

function toBytes(payload: HotPayload): Uint8Array {
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  return Uint8Array.from(payload);
}

/**
 * Encodes a client → gateway frame.
 *
 * @throws RangeError when a header value is not a byte, or `flags` has the
 *   gateway's stamp bit 0x80 set.
 */
export function encodeHot(
  svcId: number,
  opcode: number,
  payload: HotPayload = new Uint8Array(0),
  flags = 0,
): Uint8Array {
  checkByte("svcId", svcId);
  checkByte("opcode", opcode);
  checkByte("flags", flags);
  if ((flags & STAMPED_FLAG) !== 0) {
    throw new RangeError("flags bit 0x80 is reserved for frames stamped by the gateway");
  }
  const body = toBytes(payload);
  const frame = new Uint8Array(HEADER_BYTES + body.length);
  frame[0] = svcId;
  frame[1] = opcode;
  frame[2] = flags;
  frame.set(body, HEADER_BYTES);
  return frame;
}

/**
 * Decodes a gateway → client frame.
 *
 * @throws RangeError when the frame is shorter than its header (3 bytes, or 7
 *   when stamped).
 */
export function decodeHot(frame: Uint8Array): HotFrame {
  if (frame.length < HEADER_BYTES) {
    throw new RangeError(`hot frame of ${frame.length} bytes is shorter than its 3-byte header`);
  }
  const svcId = frame[0] as number;
  const opcode = frame[1] as number;
  const rawFlags = frame[2] as number;
  if ((rawFlags & STAMPED_FLAG) === 0) {
    return { svcId, opcode, flags: rawFlags, peer: undefined, payload: frame.subarray(HEADER_BYTES) };
  }
  if (frame.length < HEADER_BYTES + PEER_BYTES) {
    throw new RangeError(`stamped hot frame of ${frame.length} bytes has no 4-byte peer`);
  }
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    svcId,
    opcode,
    flags: rawFlags & ~STAMPED_FLAG,
    peer: view.getUint32(HEADER_BYTES, true),
    payload: frame.subarray(HEADER_BYTES + PEER_BYTES),
  };
}
