/**
 * When to reconnect, and how long to wait first.
 *
 * Owns: the close-code and HTTP-status verdicts (final or retryable) and the
 * full-jitter back-off. No timers, no I/O: the client asks, this answers.
 *
 * Close codes are the gateway's (README "Close codes"); with `refusal=close` a
 * refused upgrade is closed with 4000 + its HTTP status (SPEC §3).
 */

/** Close codes the client treats specially. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  Policy: 1008,
  TooBig: 1009,
  Internal: 1011,
  /** Replaced by a newer session of the same user (`kick_oldest`). */
  Replaced: 4001,
  SlowConsumer: 4002,
  IdleTimeout: 4003,
  /** Disconnected by the backend through the server API. */
  Disconnected: 4004,
  /** Used by the client itself when its liveness check gives up on a socket. */
  LivenessTimeout: 4000,
} as const;

/** Offset of `refusal=close` codes: 4401 is an HTTP 401 refusal. */
export const REFUSAL_CLOSE_BASE = 4000;

/** What to do after a connection ended. */
export type Verdict =
  | { final: true; kind: "refused" | "ended" }
  | { final: false; kind: "retry"; floorMs: number };

/**
 * HTTP statuses of a refused upgrade that retrying cannot fix: bad request
 * (400), bad ticket (401), origin (403), unknown tenant (404), user at its
 * session cap (409), wrong WebSocket version (426). 429 (rate limited) and 503
 * (draining, tenant full) are retried, and so is anything else.
 */
const FINAL_STATUSES: ReadonlySet<number> = new Set([400, 401, 403, 404, 409, 426]);

/** The verdict on an upgrade refused with HTTP `status`. */
export function verdictForStatus(status: number, retryAfterMs = 0, minDelayMs = 0): Verdict {
  if (FINAL_STATUSES.has(status)) return { final: true, kind: "refused" };
  const throttled = status === 429 || status === 503;
  return { final: false, kind: "retry", floorMs: Math.max(retryAfterMs, throttled ? minDelayMs : 0) };
}

/**
 * The verdict on a WebSocket close code.
 *
 * Final: 4001 (replaced: the newer session is the live one), 4004 (the backend
 * disconnected this user), and the `refusal=close` codes of final refusals
 * (4400..4499 but 4429). Retried: everything else, including 4429 and 4503,
 * which wait at least `minDelayMs`.
 */
export function verdictForClose(code: number, minDelayMs = 0): Verdict {
  if (code === CloseCode.Replaced || code === CloseCode.Disconnected) {
    return { final: true, kind: "ended" };
  }
  if (code >= REFUSAL_CLOSE_BASE + 400 && code < REFUSAL_CLOSE_BASE + 600) {
    return verdictForStatus(code - REFUSAL_CLOSE_BASE, 0, minDelayMs);
  }
  return { final: false, kind: "retry", floorMs: 0 };
}

/** Back-off settings. */
export interface BackoffOptions {
  /** Ceiling of the first delay (ms). Default 500. */
  initialDelayMs?: number;
  /** Largest ceiling (ms). Default 20 000. */
  maxDelayMs?: number;
  /** A session that lasted this long (ms) resets the back-off. Default 5 000. */
  resetAfterMs?: number;
  /** Source of randomness in [0, 1); tests pin it. Default `Math.random`. */
  random?: () => number;
}

export const DEFAULT_INITIAL_DELAY_MS = 500;
export const DEFAULT_MAX_DELAY_MS = 20_000;
/**
 * A session must stay up this long before its end counts as a fresh start.
 * Without it a gateway that accepts and then at once closes (1008, 1009, a
 * crash loop) would be hit every 0–500 ms forever.
 */
export const DEFAULT_RESET_AFTER_MS = 5_000;

/**
 * Full-jitter exponential back-off: a uniform delay in
 * `[0, min(maxDelayMs, initialDelayMs * 2^attempt))`, never below `floorMs`.
 * Full jitter spreads a crowd of clients that lost the same gateway.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, floorMs = 0): number {
  const initial = opts.initialDelayMs ?? DEFAULT_INITIAL_DELAY_MS;
  const max = opts.maxDelayMs ?? DEFAULT_MAX_DELAY_MS;
  const random = opts.random ?? Math.random;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.max(floorMs, Math.floor(random() * ceiling));
}
