/**
 * Errors the client hands to the application.
 *
 * Owns: `WsprismError`, the one error type of the SDK, and the mapping from a
 * gateway `sys.error` envelope to it.
 * Input: `sys.error` envelopes (gateway codes, README "`sys.error` codes"),
 * close codes and HTTP refusals (client codes below).
 */

import type { Envelope } from "./envelope.js";

/** Codes the gateway sends in `sys.error` (SPEC §4; stable). */
export type GatewayErrorCode =
  | "BAD_REQUEST"
  | "UNSUPPORTED_VERSION"
  | "NOT_ALLOWED"
  | "RATE_LIMITED"
  | "PAYLOAD_TOO_LARGE"
  | "UNKNOWN_SERVICE"
  | "NOT_IN_ROOM"
  | "ROOM_FULL"
  | "ROOM_LIMIT"
  | "SERVICE_ERROR"
  | "SERVICE_UNAVAILABLE"
  | "INTERNAL";

/**
 * Codes the client itself produces.
 *
 * - `TIMEOUT`: no `sys.ack` / `sys.error` within the request's `timeoutMs`.
 * - `CONNECTION_LOST`: the socket closed while the request was in flight; the
 *   gateway may or may not have handled it.
 * - `NOT_CONNECTED`: `request` before `connect()`.
 * - `CLIENT_CLOSED`: the client was closed by the application.
 * - `REFUSED`: the gateway refused the connection for good (`status` and, with
 *   `refusal=close`, `closeCode` say why); the client stopped.
 * - `SESSION_ENDED`: the gateway ended the session for good (4001 replaced by a
 *   newer session, 4004 disconnected through the server API); the client stopped.
 * - `TICKET_FAILED`: `getTicket()` threw or rejected; the client retries.
 */
export type ClientErrorCode =
  | "TIMEOUT"
  | "CONNECTION_LOST"
  | "NOT_CONNECTED"
  | "CLIENT_CLOSED"
  | "REFUSED"
  | "SESSION_ENDED"
  | "TICKET_FAILED";

/** Every code a `WsprismError` can carry; unknown gateway codes pass through as strings. */
export type ErrorCode = GatewayErrorCode | ClientErrorCode | (string & {});

/** Extra facts an error may carry. */
export interface WsprismErrorInit {
  /** A plugin's own refusal code (`data.reason` of a `SERVICE_ERROR`). */
  reason?: string | undefined;
  /** The `seq` of the request this answers. */
  seq?: number | undefined;
  /** The WebSocket close code that ended the connection. */
  closeCode?: number | undefined;
  /** The HTTP status of a refused upgrade (4000 + status with `refusal=close`). */
  status?: number | undefined;
  cause?: unknown;
}

/** The SDK's error: a gateway refusal or a client-side failure. */
export class WsprismError extends Error {
  override readonly name = "WsprismError";
  /** `NOT_ALLOWED`, `SERVICE_ERROR`, … or a client code such as `TIMEOUT`. */
  readonly code: ErrorCode;
  /** The gateway's (or client's) human-readable message. */
  readonly msg: string;
  /** A plugin's own code for `SERVICE_ERROR`, e.g. `ALREADY_VOTED`. */
  readonly reason: string | undefined;
  readonly seq: number | undefined;
  readonly closeCode: number | undefined;
  readonly status: number | undefined;

  constructor(code: ErrorCode, msg: string, init: WsprismErrorInit = {}) {
    super(
      init.reason === undefined ? `${code}: ${msg}` : `${code} (${init.reason}): ${msg}`,
      init.cause === undefined ? undefined : { cause: init.cause },
    );
    this.code = code;
    this.msg = msg;
    this.reason = init.reason;
    this.seq = init.seq;
    this.closeCode = init.closeCode;
    this.status = init.status;
  }

  /**
   * The error a `sys.error` envelope describes.
   *
   * `reason` is `data.reason`. Gateways from before `data.reason` existed put a
   * plugin's code at the start of `msg` (`"ALREADY_VOTED: one vote per user"`);
   * for `SERVICE_ERROR` that prefix is used when `data.reason` is absent.
   */
  static fromEnvelope(env: Envelope): WsprismError {
    const data = isRecord(env.data) ? env.data : {};
    const code = typeof data["code"] === "string" ? data["code"] : "INTERNAL";
    const msg = typeof data["msg"] === "string" ? data["msg"] : "";
    let reason = typeof data["reason"] === "string" ? data["reason"] : undefined;
    if (reason === undefined && code === "SERVICE_ERROR") {
      reason = /^([A-Z][A-Z0-9_]*): /.exec(msg)?.[1];
    }
    return new WsprismError(code, msg, { reason, seq: env.seq });
  }
}

/** `true` for a plain (non-array, non-null) object. */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
