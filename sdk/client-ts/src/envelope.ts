/**
 * Ext Lane envelopes (SPEC §4): the JSON text frames of both directions.
 *
 * Owns: the envelope type and its encode/decode. No I/O.
 */

import { isRecord } from "./errors.js";

/** One Ext Lane message, as the gateway sends it. */
export interface Envelope<D = unknown> {
  v: 1;
  svc: string;
  type: string;
  room?: string;
  seq?: number;
  data?: D;
  /** Position of a reliable room publication when the room keeps history (SPEC §11). */
  offset?: number;
  /** The room's history epoch, beside `offset`. */
  epoch?: string;
}

/** A client → gateway message before encoding. */
export interface OutgoingEnvelope {
  svc: string;
  type: string;
  room?: string | undefined;
  seq?: number | undefined;
  data?: unknown;
}

/** Encodes one client message; absent fields are left out. */
export function encodeEnvelope(msg: OutgoingEnvelope): string {
  const out: Record<string, unknown> = { v: 1, svc: msg.svc, type: msg.type };
  if (msg.room !== undefined) out["room"] = msg.room;
  if (msg.seq !== undefined) out["seq"] = msg.seq;
  if (msg.data !== undefined) out["data"] = msg.data;
  return JSON.stringify(out);
}

/** Parses one gateway text frame; `undefined` for anything that is not an envelope. */
export function decodeEnvelope(text: string): Envelope | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(v) || typeof v["svc"] !== "string" || typeof v["type"] !== "string") {
    return undefined;
  }
  return v as unknown as Envelope;
}
