/**
 * The WebSocket the client drives: the browser's, or an injected one (the `ws`
 * package in Node).
 *
 * Owns: the smallest WebSocket surface the client uses, the handshake-status hook
 * for Node, and the endpoint URL. The client never imports a WebSocket library.
 */

/**
 * Event handler property type. Written as a method signature so that the DOM's
 * and `ws`'s handler types (which take richer event objects) are assignable.
 */
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

/** The part of the WHATWG `WebSocket` the client uses; `ws` and browsers match it. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `ws`'s default export. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * Reports the HTTP status of a refused upgrade (and `Retry-After` in ms) for a
 * socket that is still connecting.
 */
export type ReportStatus = (status: number, retryAfterMs?: number) => void;

/**
 * Called with every new socket before it connects. Browsers cannot see the HTTP
 * status of a refused upgrade, so without a hook (or a gateway that honours
 * `refusal=close`) a refusal looks like a network failure and is retried.
 */
export type HandshakeInspector = (socket: WebSocketLike, report: ReportStatus) => void;

interface NodeUpgradeResponse {
  statusCode?: number;
  headers?: Record<string, string | string[] | undefined>;
}
interface NodeWsLike {
  on?: (event: string, fn: (...args: never[]) => void) => unknown;
  terminate?: () => void;
}

/**
 * A `HandshakeInspector` for the `ws` package: its `unexpected-response` event
 * carries the HTTP answer to a refused upgrade. The socket is then terminated,
 * which ends it with close code 1006 and the reported status.
 */
export const wsHandshakeInspector: HandshakeInspector = (socket, report) => {
  const s = socket as unknown as NodeWsLike;
  if (typeof s.on !== "function") return;
  s.on("unexpected-response", ((_req: unknown, res: NodeUpgradeResponse) => {
    const raw = res.headers?.["retry-after"];
    const secs = Number(Array.isArray(raw) ? raw[0] : raw);
    report(res.statusCode ?? 0, Number.isFinite(secs) && secs > 0 ? secs * 1000 : undefined);
    s.terminate?.();
  }) as (...args: never[]) => void);
};

/** WHATWG `readyState` values. */
export const ReadyState = { Connecting: 0, Open: 1, Closing: 2, Closed: 3 } as const;

/**
 * The gateway endpoint for one attempt: `base` (`ws(s)://` or `http(s)://`, with
 * or without the `/v1/ws` path) plus `tenant`, `ticket` and, unless disabled,
 * `refusal=close`.
 */
export function endpointUrl(base: string, tenant: string, ticket: string, refusalClose: boolean): string {
  const url = new URL(base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`url must be ws://, wss://, http:// or https://, got ${base}`);
  }
  if (!url.pathname.endsWith("/v1/ws")) {
    url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/ws`;
  }
  url.searchParams.set("tenant", tenant);
  url.searchParams.set("ticket", ticket);
  if (refusalClose) url.searchParams.set("refusal", "close");
  else url.searchParams.delete("refusal");
  return url.toString();
}

/** The bytes of a binary message as delivered by a browser or by `ws`. */
export function binaryBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}
