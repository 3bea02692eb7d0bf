/**
 * The connection to one gateway: connect, reconnect, requests, rooms, Hot Lane.
 *
 * Owns: the socket of the moment, the connection state
 * (`idle` → `connecting` → `open` → `waiting` → `connecting` … → `stopped`),
 * request bookkeeping by `seq`, the liveness check, and the room table.
 * Input: gateway frames (SPEC §4–§6, §11) and the application's calls.
 * Output: client and room events, settled request promises, frames to send.
 * Must not: retry a final refusal or a final close (see `reconnect.ts`), or
 * leave a request unsettled: every request ends with an answer, a timeout, a
 * lost connection or the client's stop.
 */

import { Emitter, type Listener, type Unsubscribe } from "./emitter.js";
import { decodeEnvelope, encodeEnvelope, type Envelope, type OutgoingEnvelope } from "./envelope.js";
import { isRecord, WsprismError } from "./errors.js";
import { decodeHot, encodeHot, type HotFrame, type HotPayload } from "./hot.js";
import {
  backoffDelay,
  CloseCode,
  DEFAULT_INITIAL_DELAY_MS,
  DEFAULT_RESET_AFTER_MS,
  REFUSAL_CLOSE_BASE,
  verdictForClose,
  verdictForStatus,
  type BackoffOptions,
  type Verdict,
} from "./reconnect.js";
import { Room, type ResetInfo, type RoomHost, type RoomOptions, type Presence } from "./room.js";
import {
  binaryBytes,
  endpointUrl,
  ReadyState,
  type HandshakeInspector,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./socket.js";

/** Default request timeout: long enough for a plugin calling its backend. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Default bound from opening a socket to `sys.authed`. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/**
 * Default silence before a liveness probe. The gateway pings every 20 s, but
 * browsers do not surface pings, so a quiet session probes itself; 30 s keeps
 * the probe rare.
 */
export const DEFAULT_LIVENESS_IDLE_MS = 30_000;
/** Default wait for any frame after a probe before the socket is declared dead. */
export const DEFAULT_LIVENESS_TIMEOUT_MS = 10_000;

/** The liveness check: detects sockets that died silently (laptop sleep, Wi-Fi change). */
export interface LivenessOptions {
  /** Silence (ms) after which a probe is sent. Default 30 000. */
  idleMs?: number;
  /** Wait (ms) for any inbound frame after a probe; then the socket is dropped and the client reconnects. Default 10 000. */
  timeoutMs?: number;
  /**
   * The probe message, sent with a fresh `seq`. Any answer counts, an error
   * included. Default `{svc: "sys", type: "ping"}`, which the gateway always
   * answers with `sys.pong` carrying the `seq` (never charged as a refusal).
   */
  probe?: { svc: string; type: string; room?: string; data?: unknown };
}

/** Options of `new WsprismClient`. */
export interface ClientOptions {
  /** `ws(s)://host:port`, optionally with the `/v1/ws` path. */
  url: string;
  tenant: string;
  /** Called before every connection attempt; a ticket is often single-use. */
  getTicket: () => string | Promise<string>;
  /** The WebSocket constructor; defaults to `globalThis.WebSocket` (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
  /** Reports the HTTP status of refused upgrades (Node: `wsHandshakeInspector`). */
  inspectHandshake?: HandshakeInspector;
  /** Back-off settings, or `false` to never reconnect (the first close stops the client). */
  reconnect?: BackoffOptions | false;
  /** Ask refused upgrades to be closed with 4000 + status (`refusal=close`). Default `true`. */
  refusalClose?: boolean;
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** The liveness check, or `false` to rely on the socket's own close alone. */
  liveness?: LivenessOptions | false;
}

/** Connection states. */
export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "stopped";

/** `sys.authed`. */
export interface SessionInfo {
  tenant: string;
  user: string;
  sid: string;
}

/** Payload of `disconnected`. */
export interface DisconnectInfo {
  /** The close code; 1006 for a failed connection, 4000 when the liveness check gave up. */
  code: number;
  reason: string;
  /** The HTTP status of a refused upgrade, when known. */
  status: number | undefined;
  willRetry: boolean;
  /** Delay before the next attempt, when `willRetry`. */
  retryInMs: number | undefined;
}

/** Client events. */
export interface ClientEvents {
  state: ConnectionState;
  /** A session started (`sys.authed`); rooms are being rejoined. */
  connected: SessionInfo;
  disconnected: DisconnectInfo;
  /** The client stopped for good: `REFUSED`, `SESSION_ENDED` or `CLIENT_CLOSED`. */
  stopped: WsprismError;
  /** Every envelope received, `sys` ones included. */
  message: Envelope;
  /** Every Hot Lane frame received. */
  hot: HotFrame;
  /** A `sys.error` that answers no request, a failed `getTicket`, a refused automatic rejoin. */
  error: WsprismError;
  /** A room's state must be reloaded (any room; rooms also emit it). */
  reset: ResetInfo;
}

/** Options of a request. */
export interface RequestOptions {
  room?: string;
  timeoutMs?: number;
}

/** One request, from the application's call to its settlement. */
interface Call {
  msg: OutgoingEnvelope;
  /** The `sys` type that settles it before the ack (`joined`, `left`, `presence`). */
  resolveOn: string | undefined;
  /** Runs synchronously with the settling frame. */
  onReply: ((env: Envelope) => void) | undefined;
  resolve: (env: Envelope) => void;
  reject: (err: WsprismError) => void;
  seq: number | undefined;
  /** A `sys` frame that carried this `seq` before the ack. */
  reply: Envelope | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Probe `seq`s remembered to keep their answers out of `error` events. */
const MAX_PROBES_REMEMBERED = 8;

/** Descriptions of final HTTP refusals (README "Handshake refusals"). */
const REFUSAL_TEXT: Readonly<Record<number, string>> = {
  400: "bad request",
  401: "ticket refused",
  403: "origin not allowed",
  404: "unknown tenant",
  409: "too many sessions for this user",
  426: "unsupported WebSocket version",
};

/**
 * A wsPrism client.
 *
 * ```ts
 * const client = new WsprismClient({ url, tenant: "acme", getTicket: () => fetchTicket() });
 * await client.connect();
 * const room = await client.join("match:1");
 * room.on("message", (m) => console.log(m.data));
 * await room.request("chat", "send", { msg: "hi" });
 * ```
 */
export class WsprismClient {
  readonly #opts: ClientOptions;
  readonly #events = new Emitter<ClientEvents>();
  readonly #rooms = new Map<string, Room>();
  readonly #pending = new Map<number, Call>();
  readonly #queued = new Set<Call>();
  readonly #probes = new Set<number>();
  readonly #host: RoomHost;
  #state: ConnectionState = "idle";
  #socket: WebSocketLike | null = null;
  #session: SessionInfo | undefined;
  #stopError: WsprismError | undefined;
  #attempt = 0;
  #seq = 0;
  /** Bumped per attempt so a slow `getTicket` of an abandoned attempt is ignored. */
  #generation = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #livenessTimer: ReturnType<typeof setInterval> | undefined;
  #openedAt = 0;
  #lastInbound = 0;
  #lastTick = 0;
  #probeSentAt: number | undefined;
  #waiters: Array<{ resolve: (s: SessionInfo) => void; reject: (e: WsprismError) => void }> = [];
  #detachWake: (() => void) | undefined;

  constructor(opts: ClientOptions) {
    this.#opts = opts;
    this.#host = {
      call: (msg, resolveOn, onReply, timeoutMs) => this.#call(msg, resolveOn, onReply, timeoutMs),
      send: (msg) => this.#sendNow(msg),
      isOpen: () => this.#state === "open",
      track: (room) => this.#rooms.set(room.name, room),
      forget: (room) => {
        if (this.#rooms.get(room.name) === room) this.#rooms.delete(room.name);
      },
      reset: (info) => this.#events.emit("reset", info),
      error: (err) => this.#events.emit("error", err),
    };
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The current session, while `open`. */
  get session(): SessionInfo | undefined {
    return this.#session;
  }

  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): Unsubscribe {
    return this.#events.on(event, fn);
  }

  once<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): Unsubscribe {
    return this.#events.once(event, fn);
  }

  /**
   * Starts connecting (and reconnecting) and resolves with the first session.
   * Rejects when the client stops first (a final refusal, or `close()`).
   * While refusals look retryable the promise stays pending and the client
   * keeps trying; watch `disconnected` for progress.
   */
  connect(): Promise<SessionInfo> {
    if (this.#state === "open" && this.#session !== undefined) return Promise.resolve(this.#session);
    const session = new Promise<SessionInfo>((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if (this.#state === "idle" || this.#state === "stopped") {
      this.#stopError = undefined;
      this.#attempt = 0;
      this.#attachWake();
      void this.#open();
    }
    return session;
  }

  /**
   * Stops for good: closes the socket, rejects every request with
   * `CLIENT_CLOSED`, and leaves every room locally. `connect()` starts again.
   */
  close(code: number = CloseCode.Normal, reason = "client closed"): void {
    if (this.#state === "idle" || this.#state === "stopped") return;
    const socket = this.#socket;
    this.#stop(new WsprismError("CLIENT_CLOSED", reason));
    if (socket !== null) {
      this.#detach(socket);
      try {
        socket.close(code, reason);
      } catch {
        // already closing
      }
    }
  }

  /**
   * Sends `{svc, type, room, data}` with a fresh `seq` and resolves with the
   * gateway's answer: the `sys` frame that carried the `seq` (e.g.
   * `sys.joined`), else the `sys.ack`. While connecting, the request waits for
   * the connection (within `timeoutMs`).
   *
   * @throws WsprismError: the gateway's code from `sys.error` (with `reason`
   *   for a plugin's own refusal), or `TIMEOUT`, `CONNECTION_LOST` (the socket
   *   closed after it was sent), `NOT_CONNECTED`, `CLIENT_CLOSED`, `REFUSED`,
   *   `SESSION_ENDED`.
   */
  request(svc: string, type: string, data?: unknown, opts: RequestOptions = {}): Promise<Envelope> {
    return this.#call({ svc, type, room: opts.room, data }, undefined, undefined, opts.timeoutMs);
  }

  /** Fire-and-forget (no `seq`, no answer); `false` when not connected. */
  send(svc: string, type: string, data?: unknown, opts: { room?: string } = {}): boolean {
    return this.#sendNow({ svc, type, room: opts.room, data });
  }

  /** Sends a Hot Lane frame (to the session's active room for `relay`); `false` when not connected. */
  sendHot(svcId: number, opcode: number, payload?: HotPayload, flags?: number): boolean {
    const frame = encodeHot(svcId, opcode, payload, flags);
    const socket = this.#socket;
    if (this.#state !== "open" || socket === null) return false;
    socket.send(frame);
    return true;
  }

  /** The handle of `name`, created on first use; attach listeners, then `join()`. */
  room(name: string, opts?: RoomOptions): Room {
    let room = this.#rooms.get(name);
    if (room === undefined) {
      room = new Room(name, this.#host, opts);
      this.#rooms.set(name, room);
    } else if (opts?.onReset !== undefined) {
      room.on("reset", opts.onReset);
    }
    return room;
  }

  /** Joins `name` and resolves with its handle (see `Room.join`). */
  join(name: string, opts?: RoomOptions): Promise<Room> {
    return this.room(name, opts).join();
  }

  /** Leaves `name` (see `Room.leave`). */
  async leave(name: string): Promise<void> {
    await this.#rooms.get(name)?.leave();
  }

  /** The members of a joined room. */
  presence(name: string): Promise<Presence> {
    return this.room(name).presence();
  }

  /** The rooms joined or being (re)joined. */
  rooms(): Room[] {
    return [...this.#rooms.values()].filter((r) => r.state !== "idle" && r.state !== "left");
  }

  // --- connection -----------------------------------------------------------

  async #open(): Promise<void> {
    const generation = ++this.#generation;
    this.#setState("connecting");
    let ticket: string;
    try {
      ticket = await this.#opts.getTicket();
    } catch (cause) {
      if (generation !== this.#generation || this.#state !== "connecting") return;
      this.#events.emit("error", new WsprismError("TICKET_FAILED", `getTicket failed: ${String(cause)}`, { cause }));
      this.#retry(CloseCode.Abnormal, "getTicket failed", undefined, 0);
      return;
    }
    if (generation !== this.#generation || this.#state !== "connecting") return;
    const Ctor = this.#opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) {
      this.#stop(new WsprismError("NOT_CONNECTED", "no WebSocket constructor: pass `WebSocket` (e.g. the `ws` package) in the options"));
      return;
    }
    let socket: WebSocketLike;
    try {
      socket = new Ctor(endpointUrl(this.#opts.url, this.#opts.tenant, ticket, this.#opts.refusalClose ?? true));
    } catch (cause) {
      this.#events.emit("error", new WsprismError("CONNECTION_LOST", `cannot open a WebSocket: ${String(cause)}`, { cause }));
      this.#retry(CloseCode.Abnormal, "cannot open a WebSocket", undefined, 0);
      return;
    }
    this.#socket = socket;
    socket.binaryType = "arraybuffer";
    let refusal: { status: number; retryAfterMs: number } | undefined;
    this.#opts.inspectHandshake?.(socket, (status, retryAfterMs) => {
      refusal = { status, retryAfterMs: retryAfterMs ?? 0 };
    });
    socket.onmessage = (ev) => {
      if (socket === this.#socket) this.#receive(ev.data);
    };
    socket.onclose = (ev) => {
      if (socket === this.#socket) this.#closed(ev.code, ev.reason, refusal);
    };
    // A close event always follows an error event; the close decides.
    socket.onerror = () => undefined;
    this.#connectTimer = setTimeout(() => {
      if (socket === this.#socket && this.#state === "connecting") {
        this.#abandon(socket, CloseCode.Abnormal, "no sys.authed within the connect timeout");
      }
    }, this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
  }

  #authed(env: Envelope): void {
    clearTimeout(this.#connectTimer);
    const d = isRecord(env.data) ? env.data : {};
    const session: SessionInfo = { tenant: String(d["tenant"] ?? ""), user: String(d["user"] ?? ""), sid: String(d["sid"] ?? "") };
    this.#session = session;
    this.#openedAt = Date.now();
    this.#setState("open");
    this.#startLiveness();
    for (const w of this.#waiters.splice(0)) w.resolve(session);
    this.#events.emit("connected", session);
    // Rooms first, so requests queued while away find their rooms joined
    // (the gateway handles a session's messages in order).
    for (const room of [...this.#rooms.values()]) room._rejoin();
    for (const call of [...this.#queued]) {
      this.#queued.delete(call);
      this.#dispatch(call);
    }
  }

  #closed(code: number, reason: string, refusal: { status: number; retryAfterMs: number } | undefined): void {
    const minDelay = this.#backoff()?.initialDelayMs ?? DEFAULT_INITIAL_DELAY_MS;
    let status = refusal?.status;
    let verdict: Verdict;
    if (refusal !== undefined) {
      verdict = verdictForStatus(refusal.status, refusal.retryAfterMs, minDelay);
    } else {
      verdict = verdictForClose(code, minDelay);
      if (code >= REFUSAL_CLOSE_BASE + 400 && code < REFUSAL_CLOSE_BASE + 600) status = code - REFUSAL_CLOSE_BASE;
    }
    if (verdict.final) {
      this.#teardown();
      const text = reason !== "" ? reason : status !== undefined ? (REFUSAL_TEXT[status] ?? `HTTP ${status}`) : `closed with ${code}`;
      const err =
        verdict.kind === "refused"
          ? new WsprismError("REFUSED", `connection refused: ${text}`, { closeCode: code, status })
          : new WsprismError("SESSION_ENDED", code === CloseCode.Replaced ? "replaced by a newer session of this user" : `session ended by the server: ${text}`, { closeCode: code });
      this.#events.emit("disconnected", { code, reason, status, willRetry: false, retryInMs: undefined });
      this.#stop(err);
      return;
    }
    this.#retry(code, reason, status, verdict.floorMs);
  }

  /** Drops the socket of the moment and schedules the next attempt (or stops when reconnecting is off). */
  #retry(code: number, reason: string, status: number | undefined, floorMs: number): void {
    const lasted = this.#state === "open" ? Date.now() - this.#openedAt : 0;
    this.#teardown();
    const backoff = this.#backoff();
    if (backoff === undefined) {
      this.#events.emit("disconnected", { code, reason, status, willRetry: false, retryInMs: undefined });
      this.#stop(new WsprismError("CONNECTION_LOST", `connection closed (${code}${reason ? ` ${reason}` : ""}) and reconnect is off`, { closeCode: code, status }));
      return;
    }
    if (lasted >= (backoff.resetAfterMs ?? DEFAULT_RESET_AFTER_MS)) this.#attempt = 0;
    const delay = backoffDelay(this.#attempt, backoff, floorMs);
    this.#attempt += 1;
    this.#setState("waiting");
    this.#events.emit("disconnected", { code, reason, status, willRetry: true, retryInMs: delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#state === "waiting") void this.#open();
    }, delay);
  }

  /** Forgets the socket: timers stop, in-flight requests fail, joined rooms wait to rejoin. */
  #teardown(): void {
    if (this.#socket !== null) this.#detach(this.#socket);
    this.#socket = null;
    this.#session = undefined;
    clearTimeout(this.#connectTimer);
    clearInterval(this.#livenessTimer);
    this.#livenessTimer = undefined;
    this.#probeSentAt = undefined;
    this.#probes.clear();
    for (const call of [...this.#pending.values()]) {
      this.#settle(call, new WsprismError("CONNECTION_LOST", `connection lost before ${call.msg.svc}.${call.msg.type} was answered`, { seq: call.seq }));
    }
    for (const room of this.#rooms.values()) room._connectionLost();
  }

  #stop(err: WsprismError): void {
    this.#teardown();
    this.#generation += 1;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#detachWake?.();
    this.#detachWake = undefined;
    this.#stopError = err;
    for (const call of [...this.#queued]) this.#settle(call, err);
    for (const room of [...this.#rooms.values()]) room._stopped();
    this.#rooms.clear();
    for (const w of this.#waiters.splice(0)) w.reject(err);
    this.#setState("stopped");
    this.#events.emit("stopped", err);
  }

  /** Gives up on a socket that did not close by itself (connect timeout, failed liveness check). */
  #abandon(socket: WebSocketLike, code: number, reason: string): void {
    this.#detach(socket);
    const terminate = (socket as { terminate?: () => void }).terminate;
    try {
      // `ws` can drop the TCP connection at once; a browser socket gets a close.
      if (typeof terminate === "function") terminate.call(socket);
      else socket.close(CloseCode.LivenessTimeout, reason);
    } catch {
      // already closed
    }
    this.#retry(code, reason, undefined, 0);
  }

  #detach(socket: WebSocketLike): void {
    socket.onmessage = null;
    socket.onclose = null;
    socket.onopen = null;
    // Keep an error handler: `ws` throws on an error event nobody listens to.
    socket.onerror = () => undefined;
  }

  #backoff(): BackoffOptions | undefined {
    const r = this.#opts.reconnect;
    return r === false ? undefined : (r ?? {});
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#events.emit("state", state);
  }

  // --- inbound --------------------------------------------------------------

  #receive(data: unknown): void {
    this.#lastInbound = Date.now();
    this.#probeSentAt = undefined;
    if (typeof data !== "string") {
      const bytes = binaryBytes(data);
      if (bytes === undefined) return;
      let frame: HotFrame;
      try {
        frame = decodeHot(bytes);
      } catch {
        return; // a frame shorter than its header: nothing to deliver
      }
      this.#events.emit("hot", frame);
      return;
    }
    const env = decodeEnvelope(data);
    if (env === undefined) return;
    if (env.svc === "sys") this.#receiveSys(env);
    else if (typeof env.room === "string") this.#rooms.get(env.room)?._dispatch(env);
    this.#events.emit("message", env);
  }

  #receiveSys(env: Envelope): void {
    const call = typeof env.seq === "number" ? this.#pending.get(env.seq) : undefined;
    switch (env.type) {
      case "authed":
        if (this.#state === "connecting") this.#authed(env);
        return;
      case "ack":
        if (call !== undefined) this.#settle(call, call.reply ?? env);
        return;
      case "error": {
        const err = WsprismError.fromEnvelope(env);
        if (call !== undefined) this.#settle(call, err);
        else if (typeof env.seq === "number" && this.#probes.delete(env.seq)) return;
        else this.#events.emit("error", err);
        return;
      }
      case "pong":
        if (typeof env.seq === "number") this.#probes.delete(env.seq);
        return;
      case "resync":
        if (typeof env.room === "string") this.#rooms.get(env.room)?._resync(env);
        return;
      default:
        if (call === undefined) return;
        if (call.resolveOn === env.type) this.#settle(call, env);
        else call.reply = env;
    }
  }

  // --- requests -------------------------------------------------------------

  #call(msg: OutgoingEnvelope, resolveOn: string | undefined, onReply: ((env: Envelope) => void) | undefined, timeoutMs?: number): Promise<Envelope> {
    if (this.#state === "idle") {
      return Promise.reject(new WsprismError("NOT_CONNECTED", "call connect() before sending requests"));
    }
    if (this.#state === "stopped") {
      return Promise.reject(this.#stopError ?? new WsprismError("CLIENT_CLOSED", "the client is closed"));
    }
    const limit = timeoutMs ?? this.#opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    return new Promise<Envelope>((resolve, reject) => {
      const call: Call = { msg, resolveOn, onReply, resolve, reject, seq: undefined, reply: undefined, timer: undefined };
      call.timer = setTimeout(() => {
        this.#settle(call, new WsprismError("TIMEOUT", `no answer to ${msg.svc}.${msg.type} within ${limit} ms`, { seq: call.seq }));
      }, limit);
      if (this.#state === "open") this.#dispatch(call);
      else this.#queued.add(call);
    });
  }

  #dispatch(call: Call): void {
    const seq = ++this.#seq;
    call.seq = seq;
    this.#pending.set(seq, call);
    this.#sendText({ ...call.msg, seq });
  }

  #settle(call: Call, outcome: Envelope | WsprismError): void {
    clearTimeout(call.timer);
    this.#queued.delete(call);
    if (call.seq !== undefined) this.#pending.delete(call.seq);
    if (outcome instanceof WsprismError) {
      call.reject(outcome);
      return;
    }
    call.onReply?.(outcome);
    call.resolve(outcome);
  }

  #sendNow(msg: OutgoingEnvelope): boolean {
    if (this.#state !== "open") return false;
    return this.#sendText(msg);
  }

  #sendText(msg: OutgoingEnvelope): boolean {
    const socket = this.#socket;
    if (socket === null || socket.readyState !== ReadyState.Open) return false;
    try {
      socket.send(encodeEnvelope(msg));
      return true;
    } catch {
      return false; // the close event follows and fails what is in flight
    }
  }

  // --- liveness ---------------------------------------------------------------

  #livenessSettings(): { idleMs: number; timeoutMs: number; tickMs: number } | undefined {
    const l = this.#opts.liveness;
    if (l === false) return undefined;
    const idleMs = l?.idleMs ?? DEFAULT_LIVENESS_IDLE_MS;
    const timeoutMs = l?.timeoutMs ?? DEFAULT_LIVENESS_TIMEOUT_MS;
    // Check often enough to notice both bounds within a quarter of the smaller.
    const tickMs = Math.max(25, Math.min(1_000, Math.floor(Math.min(idleMs, timeoutMs) / 4)));
    return { idleMs, timeoutMs, tickMs };
  }

  #startLiveness(): void {
    const s = this.#livenessSettings();
    if (s === undefined) return;
    this.#lastInbound = Date.now();
    this.#lastTick = this.#lastInbound;
    this.#livenessTimer = setInterval(() => this.#checkLiveness(false), s.tickMs);
  }

  /** `force`: probe now (the page became visible, the network came back). */
  #checkLiveness(force: boolean): void {
    const s = this.#livenessSettings();
    const socket = this.#socket;
    if (s === undefined || socket === null || this.#state !== "open") return;
    const now = Date.now();
    // Timers do not run while the machine sleeps: a late tick means we slept,
    // and the socket may be dead without having closed.
    const slept = now - this.#lastTick > s.tickMs * 2 + 1_000;
    this.#lastTick = now;
    if (this.#probeSentAt !== undefined) {
      if (now - this.#probeSentAt >= s.timeoutMs) this.#abandon(socket, CloseCode.LivenessTimeout, "liveness check failed: no frame after the probe");
      return;
    }
    if (force || slept || now - this.#lastInbound >= s.idleMs) this.#sendProbe(now);
  }

  #sendProbe(now: number): void {
    const l = this.#opts.liveness;
    const probe = (l === false ? undefined : l?.probe) ?? { svc: "sys", type: "ping" };
    const seq = ++this.#seq;
    if (this.#probes.size >= MAX_PROBES_REMEMBERED) this.#probes.clear();
    this.#probes.add(seq);
    this.#probeSentAt = now;
    this.#sendText({ svc: probe.svc, type: probe.type, room: probe.room, data: probe.data, seq });
  }

  /** Reconnect at once when the network returns or the page becomes visible (browsers). */
  #attachWake(): void {
    if (this.#detachWake !== undefined) return;
    const g = globalThis as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
      document?: { visibilityState?: string; addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void };
    };
    const wake = (): void => this.#wake();
    const visible = (): void => {
      if (g.document?.visibilityState === "visible") this.#wake();
    };
    if (typeof g.addEventListener === "function") g.addEventListener("online", wake);
    g.document?.addEventListener?.("visibilitychange", visible);
    this.#detachWake = () => {
      g.removeEventListener?.("online", wake);
      g.document?.removeEventListener?.("visibilitychange", visible);
    };
  }

  #wake(): void {
    if (this.#state === "waiting") {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
      void this.#open();
    } else if (this.#state === "open" && Date.now() - this.#lastInbound > 1_000) {
      this.#checkLiveness(true);
    }
  }

  /** @internal For tests and debugging: requests in flight and waiting. */
  get _inFlight(): { pending: number; queued: number } {
    return { pending: this.#pending.size, queued: this.#queued.size };
  }
}

export { Room };
