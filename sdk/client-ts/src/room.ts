/**
 * One room of a client: membership, presence, its messages and its history
 * position.
 *
 * Owns: the room's state (`idle` → `joining` → `joined` ⇄ `rejoining` → `left`),
 * its `{epoch, offset}` position, and the room's events.
 * Input: envelopes the client routes here by `room`, and the client's
 * connection changes (`_connectionLost`, `_rejoin`, `_stopped`).
 * Output: requests through the client (`RoomHost`), room events, and resets
 * reported to the client.
 * Must not: touch the socket; everything goes through the host.
 */

import { Emitter, type Listener, type Unsubscribe } from "./emitter.js";
import type { Envelope, OutgoingEnvelope } from "./envelope.js";
import { isRecord, WsprismError } from "./errors.js";

/** A position in a room's history (SPEC §11). */
export interface Position {
  epoch: string;
  offset: number;
}

/** What `sys.joined` said, plus whether it was an automatic rejoin. */
export interface JoinInfo {
  room: string;
  /** This session's number in the room (Hot Lane stamps carry it). */
  peer: number;
  members: number;
  /** The room's position after the join; absent when the room keeps no history. */
  position: Position | undefined;
  /** `true` / `false` when the join carried `since`; `undefined` otherwise. */
  recovered: boolean | undefined;
  /** `true` for the automatic rejoin after a reconnect. */
  rejoin: boolean;
}

/**
 * Why the application must reload the room's state from its backend.
 *
 * - `not_recovered`: the rejoin's `since` could not be served (epoch changed,
 *   history trimmed or expired, or history off): `sys.joined` said
 *   `recovered: false`.
 * - `no_history`: the room keeps no history (no epoch was ever seen), so what
 *   was published while the client was away is unknown.
 * - `resync`: the gateway sent `sys.resync` (a cluster node could not
 *   guarantee delivery); the position is moved to the one it named.
 */
export type ResetReason = "not_recovered" | "no_history" | "resync";

/** Payload of `reset`. */
export interface ResetInfo {
  room: string;
  reason: ResetReason;
  /** The room's position from now on. */
  position: Position | undefined;
}

/** A member, as in `room.member_joined` / `room.member_left`. */
export interface Member {
  user: string;
  peer: number;
}

/** `sys.presence`. */
export interface Presence {
  users: string[];
  /** More than 1,000 members: `users` is the first 1,000. */
  truncated: boolean;
}

/** Payload of `left`. */
export interface LeftInfo {
  room: string;
  /** Set when the room was dropped because an automatic rejoin was refused. */
  error: WsprismError | undefined;
}

/** Events of one room. */
export interface RoomEvents {
  /** Every `sys.joined`, the first and each automatic rejoin. */
  joined: JoinInfo;
  /** The room's state must be reloaded (see `ResetReason`). */
  reset: ResetInfo;
  member_joined: Member;
  member_left: Member;
  /** Every other envelope for this room: chat, plugin and server-API publications. */
  message: Envelope;
  left: LeftInfo;
}

/** Room states. */
export type RoomState = "idle" | "joining" | "joined" | "rejoining" | "left";

/** Options of a room. */
export interface RoomOptions {
  /**
   * Start from a known position (e.g. persisted by the application): the first
   * join asks the gateway to replay what came after it.
   */
  since?: Position;
  /** Called on every `reset` of this room (the same as `on("reset", fn)`). */
  onReset?: (info: ResetInfo) => void;
}

/** @internal What a room needs from its client. */
export interface RoomHost {
  call(msg: OutgoingEnvelope, resolveOn: string | undefined, onReply: ((env: Envelope) => void) | undefined, timeoutMs?: number): Promise<Envelope>;
  send(msg: OutgoingEnvelope): boolean;
  isOpen(): boolean;
  track(room: Room): void;
  forget(room: Room): void;
  reset(info: ResetInfo): void;
  error(err: WsprismError): void;
}

/** Errors after which a room stays tracked and is rejoined on the next connection. */
const CONNECTION_CODES: ReadonlySet<string> = new Set(["CONNECTION_LOST", "CLIENT_CLOSED", "NOT_CONNECTED", "REFUSED", "SESSION_ENDED"]);

/** A room handle; get one with `client.room(name)` or `await client.join(name)`. */
export class Room {
  readonly name: string;
  readonly #host: RoomHost;
  readonly #events = new Emitter<RoomEvents>();
  #state: RoomState = "idle";
  #position: Position | undefined;
  #info: JoinInfo | undefined;
  #joining: Promise<Room> | undefined;

  /** @internal Use `client.room(name)`. */
  constructor(name: string, host: RoomHost, opts: RoomOptions = {}) {
    this.name = name;
    this.#host = host;
    this.#position = opts.since;
    if (opts.onReset !== undefined) this.#events.on("reset", opts.onReset);
  }

  get state(): RoomState {
    return this.#state;
  }

  /** The last position seen (from `sys.joined` and the publications' offsets). */
  get position(): Position | undefined {
    return this.#position;
  }

  /** The last `sys.joined`. */
  get info(): JoinInfo | undefined {
    return this.#info;
  }

  on<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): Unsubscribe {
    return this.#events.on(event, fn);
  }

  once<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): Unsubscribe {
    return this.#events.once(event, fn);
  }

  /**
   * Joins the room; resolves on `sys.joined`. While the client is connecting
   * the join waits for the connection (within the request timeout). Once
   * joined, the client rejoins by itself after every reconnect.
   *
   * @throws WsprismError with the gateway's code (`NOT_ALLOWED`, `ROOM_FULL`,
   *   `ROOM_LIMIT`, …) or a client code (`TIMEOUT`, `CONNECTION_LOST`); the room
   *   is then `left`.
   */
  join(timeoutMs?: number): Promise<Room> {
    if (this.#state === "joined" || this.#state === "rejoining") return Promise.resolve(this);
    if (this.#joining !== undefined) return this.#joining;
    this.#state = "joining";
    this.#host.track(this);
    const since = this.#position;
    this.#joining = this.#host
      .call(this.#joinMessage(), "joined", (env) => this.#joined(env, false, since !== undefined), timeoutMs)
      .then(
        () => this,
        (err: unknown) => {
          if (this.#state === "joining") {
            this.#state = "left";
            this.#host.forget(this);
          }
          throw err;
        },
      )
      .finally(() => {
        this.#joining = undefined;
      });
    return this.#joining;
  }

  /** Leaves the room; the client stops rejoining it. Leaving a room not joined is a no-op. */
  async leave(timeoutMs?: number): Promise<void> {
    if (this.#state === "idle" || this.#state === "left") return;
    const wasOpen = this.#host.isOpen();
    this.#state = "left";
    this.#host.forget(this);
    if (wasOpen) {
      try {
        await this.#host.call({ svc: "room", type: "leave", room: this.name }, "left", undefined, timeoutMs);
      } catch (err) {
        // Not in the room (any more) or no session: left either way.
        if (!(err instanceof WsprismError) || !(err.code === "NOT_IN_ROOM" || CONNECTION_CODES.has(err.code))) {
          throw err;
        }
      }
    }
    this.#events.emit("left", { room: this.name, error: undefined });
  }

  /** The room's members (`sys.presence`); members only. */
  async presence(timeoutMs?: number): Promise<Presence> {
    const env = await this.#host.call({ svc: "room", type: "presence", room: this.name }, "presence", undefined, timeoutMs);
    const data = isRecord(env.data) ? env.data : {};
    const users = Array.isArray(data["users"]) ? data["users"].filter((u): u is string => typeof u === "string") : [];
    return { users, truncated: data["truncated"] === true };
  }

  /** A request with `room` set to this room (see `client.request`). */
  request(svc: string, type: string, data?: unknown, timeoutMs?: number): Promise<Envelope> {
    return this.#host.call({ svc, type, room: this.name, data }, undefined, undefined, timeoutMs);
  }

  /** Fire-and-forget message into this room; `false` when not connected. */
  send(svc: string, type: string, data?: unknown): boolean {
    return this.#host.send({ svc, type, room: this.name, data });
  }

  /** @internal An envelope for this room (any `svc` but `sys`). */
  _dispatch(env: Envelope): void {
    if (this.#state === "left" || this.#state === "idle") return;
    if (typeof env.offset === "number") {
      const epoch = typeof env.epoch === "string" ? env.epoch : this.#position?.epoch;
      const seen = this.#position;
      if (seen !== undefined && epoch === seen.epoch && env.offset <= seen.offset) {
        return; // already delivered (a replay overlapping what we saw)
      }
      if (epoch !== undefined) this.#position = { epoch, offset: env.offset };
    }
    if (env.svc === "room" && (env.type === "member_joined" || env.type === "member_left")) {
      const d = isRecord(env.data) ? env.data : {};
      const member: Member = { user: String(d["user"] ?? ""), peer: Number(d["peer"] ?? 0) };
      this.#events.emit(env.type, member);
      return;
    }
    this.#events.emit("message", env);
  }

  /** @internal `sys.resync` for this room. */
  _resync(env: Envelope): void {
    if (this.#state === "left" || this.#state === "idle") return;
    const d = isRecord(env.data) ? env.data : {};
    if (typeof d["epoch"] === "string" && typeof d["offset"] === "number") {
      this.#position = { epoch: d["epoch"], offset: d["offset"] };
    }
    this.#reset("resync");
  }

  /** @internal The socket closed: a joined room waits for the next connection. */
  _connectionLost(): void {
    if (this.#state === "joined") this.#state = "rejoining";
  }

  /** @internal A new session: rejoin with the last position. */
  _rejoin(): void {
    if (this.#state !== "rejoining") return;
    const since = this.#position;
    this.#host.call(this.#joinMessage(), "joined", (env) => this.#joined(env, true, since !== undefined)).catch((err: unknown) => {
      if (this.#state !== "rejoining") return;
      if (err instanceof WsprismError && CONNECTION_CODES.has(err.code)) return; // next connection retries
      if (err instanceof WsprismError && err.code === "TIMEOUT" && !this.#host.isOpen()) return;
      const error = err instanceof WsprismError ? err : new WsprismError("INTERNAL", String(err), { cause: err });
      this.#state = "left";
      this.#host.forget(this);
      this.#host.error(error);
      this.#events.emit("left", { room: this.name, error });
    });
  }

  /** @internal The client stopped for good. */
  _stopped(): void {
    if (this.#state === "left" || this.#state === "idle") return;
    this.#state = "left";
    this.#events.emit("left", { room: this.name, error: undefined });
  }

  #joinMessage(): OutgoingEnvelope {
    const since = this.#position;
    return {
      svc: "room",
      type: "join",
      room: this.name,
      data: since === undefined ? undefined : { since: { epoch: since.epoch, offset: since.offset } },
    };
  }

  /** Runs synchronously with the `sys.joined` frame, before the next frame is handled. */
  #joined(env: Envelope, rejoin: boolean, askedSince: boolean): void {
    if (this.#state === "left") return; // left while the join was in flight; the leave follows it
    const d = isRecord(env.data) ? env.data : {};
    const position =
      typeof d["epoch"] === "string" && typeof d["offset"] === "number" ? { epoch: d["epoch"], offset: d["offset"] } : undefined;
    this.#position = position;
    this.#state = "joined";
    const recovered = typeof d["recovered"] === "boolean" ? d["recovered"] : undefined;
    this.#info = {
      room: this.name,
      peer: Number(d["peer"] ?? 0),
      members: Number(d["members"] ?? 0),
      position,
      recovered,
      rejoin,
    };
    this.#events.emit("joined", this.#info);
    if (askedSince && recovered === false) this.#reset("not_recovered");
    else if (rejoin && !askedSince) this.#reset("no_history");
  }

  #reset(reason: ResetReason): void {
    const info: ResetInfo = { room: this.name, reason, position: this.#position };
    this.#events.emit("reset", info);
    this.#host.reset(info);
  }
}
