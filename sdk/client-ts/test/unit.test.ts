// Unit tests: codecs, back-off, verdicts, errors, the emitter, and what a real
// gateway cannot be made to send on demand (sys.resync), over a scripted socket.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  backoffDelay,
  decodeHot,
  Emitter,
  encodeHot,
  endpointUrl,
  verdictForClose,
  verdictForStatus,
  WsprismClient,
  WsprismError,
  type ResetInfo,
  type WebSocketLike,
} from "../src/index.js";

describe("hot frames", () => {
  it("encodes [svc][opcode][flags][payload]", () => {
    assert.deepEqual([...encodeHot(1, 2, new Uint8Array([9, 8]), 3)], [1, 2, 3, 9, 8]);
    assert.deepEqual([...encodeHot(255, 0)], [255, 0, 0]);
    assert.deepEqual([...encodeHot(4, 5, new Uint8Array([1, 2]).buffer)], [4, 5, 0, 1, 2]);
  });

  it("refuses values that are not bytes, and the gateway's stamp bit", () => {
    assert.throws(() => encodeHot(256, 0), RangeError);
    assert.throws(() => encodeHot(0, -1), RangeError);
    assert.throws(() => encodeHot(0, 0, [], 1.5), RangeError);
    assert.throws(() => encodeHot(0, 0, [], 0x80), /reserved/);
  });

  it("decodes plain and stamped frames (peer u32 little-endian after the header)", () => {
    const plain = decodeHot(new Uint8Array([1, 2, 0x05, 7]));
    assert.deepEqual({ ...plain, payload: [...plain.payload] }, { svcId: 1, opcode: 2, flags: 5, peer: undefined, payload: [7] });
    const stamped = decodeHot(new Uint8Array([1, 2, 0x85, 0x04, 0x03, 0x02, 0x01, 0xaa, 0xbb]));
    assert.deepEqual(
      { ...stamped, payload: [...stamped.payload] },
      { svcId: 1, opcode: 2, flags: 5, peer: 0x01020304, payload: [0xaa, 0xbb] },
    );
    const big = decodeHot(new Uint8Array([1, 1, 0x80, 0xff, 0xff, 0xff, 0xff]));
    assert.equal(big.peer, 0xffffffff);
    assert.equal(big.payload.length, 0);
  });

  it("decodes a frame that is a view into a larger buffer", () => {
    const buf = new Uint8Array([0, 0, 1, 2, 0x80, 5, 0, 0, 0, 42]);
    const f = decodeHot(buf.subarray(2));
    assert.equal(f.peer, 5);
    assert.deepEqual([...f.payload], [42]);
  });

  it("refuses frames shorter than their header", () => {
    assert.throws(() => decodeHot(new Uint8Array([1, 2])), RangeError);
    assert.throws(() => decodeHot(new Uint8Array([1, 2, 0x80, 1, 2, 3])), /peer/);
  });
});

describe("back-off", () => {
  it("is full jitter below min(max, initial * 2^attempt)", () => {
    const opts = { initialDelayMs: 500, maxDelayMs: 20_000 };
    assert.equal(backoffDelay(0, { ...opts, random: () => 0 }), 0);
    assert.equal(backoffDelay(0, { ...opts, random: () => 0.999 }), 499);
    assert.equal(backoffDelay(3, { ...opts, random: () => 0.5 }), 2_000);
    assert.equal(backoffDelay(10, { ...opts, random: () => 0.999 }), 19_980);
    assert.equal(backoffDelay(1_000, { ...opts, random: () => 0.5 }), 10_000);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(i % 12, opts);
      assert.ok(d >= 0 && d < 20_000);
    }
  });

  it("never waits less than the floor", () => {
    assert.equal(backoffDelay(0, { random: () => 0 }, 3_000), 3_000);
  });
});

describe("verdicts", () => {
  it("final close codes: replaced, disconnected, final refusals", () => {
    for (const code of [4001, 4004, 4401, 4403, 4404, 4409]) {
      assert.equal(verdictForClose(code).final, true, String(code));
    }
  });

  it("retryable close codes, 4429 and 4503 with a floor", () => {
    for (const code of [1000, 1001, 1006, 1008, 1009, 1011, 4002, 4003]) {
      assert.deepEqual(verdictForClose(code, 500), { final: false, kind: "retry", floorMs: 0 }, String(code));
    }
    assert.deepEqual(verdictForClose(4429, 500), { final: false, kind: "retry", floorMs: 500 });
    assert.deepEqual(verdictForClose(4503, 500), { final: false, kind: "retry", floorMs: 500 });
  });

  it("HTTP statuses reported by a hook, honouring Retry-After", () => {
    for (const s of [400, 401, 403, 404, 409, 426]) assert.equal(verdictForStatus(s).final, true);
    assert.deepEqual(verdictForStatus(429, 7_000, 500), { final: false, kind: "retry", floorMs: 7_000 });
    assert.deepEqual(verdictForStatus(503, 0, 500), { final: false, kind: "retry", floorMs: 500 });
    assert.equal(verdictForStatus(502).final, false);
  });
});

describe("endpoint url", () => {
  it("adds the path, tenant, ticket and refusal=close", () => {
    assert.equal(endpointUrl("ws://h:1", "acme", "a b&c", true), "ws://h:1/v1/ws?tenant=acme&ticket=a+b%26c&refusal=close");
    assert.equal(endpointUrl("https://h/base/", "t", "x", false), "wss://h/base/v1/ws?tenant=t&ticket=x");
    assert.equal(endpointUrl("ws://h/v1/ws?ticket=old", "t", "new", true), "ws://h/v1/ws?ticket=new&tenant=t&refusal=close");
    assert.throws(() => endpointUrl("ftp://h", "t", "x", true), TypeError);
  });
});

describe("errors", () => {
  it("takes code, msg, seq and data.reason from sys.error", () => {
    const e = WsprismError.fromEnvelope({ v: 1, svc: "sys", type: "error", seq: 4, data: { code: "SERVICE_ERROR", msg: "one vote", reason: "ALREADY_VOTED" } });
    assert.equal(e.code, "SERVICE_ERROR");
    assert.equal(e.reason, "ALREADY_VOTED");
    assert.equal(e.msg, "one vote");
    assert.equal(e.seq, 4);
    assert.ok(e instanceof Error);
    assert.equal(e.name, "WsprismError");
  });

  it("falls back to the CODE: prefix of msg for SERVICE_ERROR only", () => {
    const old = WsprismError.fromEnvelope({ v: 1, svc: "sys", type: "error", data: { code: "SERVICE_ERROR", msg: "ALREADY_VOTED: one vote" } });
    assert.equal(old.reason, "ALREADY_VOTED");
    const other = WsprismError.fromEnvelope({ v: 1, svc: "sys", type: "error", data: { code: "NOT_ALLOWED", msg: "X: y" } });
    assert.equal(other.reason, undefined);
  });
});

describe("emitter", () => {
  it("unsubscribes, runs once, survives a throwing listener", () => {
    const thrown: unknown[] = [];
    const em = new Emitter<{ n: number }>((err) => thrown.push(err));
    const seen: number[] = [];
    const off = em.on("n", (v) => seen.push(v));
    em.once("n", (v) => seen.push(v * 10));
    em.on("n", () => {
      throw new Error("listener bug");
    });
    em.emit("n", 1);
    off();
    em.emit("n", 2);
    assert.deepEqual(seen, [1, 10]);
    assert.match(String(thrown[0]), /listener bug/);
    assert.equal(thrown.length, 2, "the throwing listener ran for both emits");
    assert.equal(em.listenerCount("n"), 1);
  });
});

/** A socket driven by the test: it records what the client sends. */
class ScriptedSocket implements WebSocketLike {
  static last: ScriptedSocket | undefined;
  readyState = 0;
  binaryType = "blob";
  onopen: WebSocketLike["onopen"] = null;
  onmessage: WebSocketLike["onmessage"] = null;
  onclose: WebSocketLike["onclose"] = null;
  onerror: WebSocketLike["onerror"] = null;
  readonly sent: Record<string, unknown>[] = [];
  readonly url: string;

  constructor(url: string) {
    this.url = url;
    ScriptedSocket.last = this;
  }

  send(data: string | Uint8Array): void {
    if (typeof data === "string") this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code = 1000, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Delivers a gateway frame. */
  deliver(frame: object): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

describe("scripted socket", () => {
  it("treats sys.resync as a reset of that room and adopts its position", async () => {
    const client = new WsprismClient({ url: "ws://gw", tenant: "acme", getTicket: () => "t", WebSocket: ScriptedSocket, liveness: false });
    const connected = client.connect();
    await new Promise((r) => setImmediate(r));
    const sock = ScriptedSocket.last;
    assert.ok(sock);
    assert.equal(sock.binaryType, "arraybuffer");
    assert.match(sock.url, /refusal=close/);
    sock.deliver({ v: 1, svc: "sys", type: "authed", data: { tenant: "acme", user: "u", sid: "s" } });
    await connected;
    const resets: ResetInfo[] = [];
    const room = client.room("r", { onReset: (i) => resets.push(i) });
    const joined = room.join();
    const join = sock.sent.at(-1);
    assert.deepEqual({ ...join, seq: undefined }, { v: 1, svc: "room", type: "join", room: "r", seq: undefined });
    sock.deliver({ v: 1, svc: "sys", type: "joined", room: "r", seq: join?.["seq"], data: { room: "r", peer: 1, members: 1, epoch: "e1", offset: 3 } });
    await joined;
    sock.deliver({ v: 1, svc: "chat", type: "msg", room: "r", offset: 4, epoch: "e1", data: { from: "x", msg: "m" } });
    // A duplicate of an offset already seen is dropped.
    const msgs: unknown[] = [];
    room.on("message", (m) => msgs.push(m.offset));
    sock.deliver({ v: 1, svc: "chat", type: "msg", room: "r", offset: 4, epoch: "e1", data: { from: "x", msg: "m" } });
    assert.deepEqual(msgs, []);
    sock.deliver({ v: 1, svc: "sys", type: "resync", room: "r", data: { epoch: "e2", offset: 10 } });
    assert.deepEqual(resets, [{ room: "r", reason: "resync", position: { epoch: "e2", offset: 10 } }]);
    sock.deliver({ v: 1, svc: "chat", type: "msg", room: "r", offset: 11, epoch: "e2", data: { from: "x", msg: "m" } });
    assert.deepEqual(msgs, [11]);
    assert.deepEqual(room.position, { epoch: "e2", offset: 11 });
    client.close();
  });

  it("rejoins a room without history plainly and reports no_history", async () => {
    const client = new WsprismClient({ url: "ws://gw", tenant: "acme", getTicket: () => "t", WebSocket: ScriptedSocket, liveness: false, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
    const connected = client.connect();
    await new Promise((r) => setImmediate(r));
    let sock = ScriptedSocket.last;
    assert.ok(sock);
    sock.deliver({ v: 1, svc: "sys", type: "authed", data: { tenant: "acme", user: "u", sid: "s1" } });
    await connected;
    const resets: ResetInfo[] = [];
    const room = client.room("plain", { onReset: (i) => resets.push(i) });
    const joined = room.join();
    sock.deliver({ v: 1, svc: "sys", type: "joined", room: "plain", seq: sock.sent.at(-1)?.["seq"], data: { room: "plain", peer: 1, members: 1 } });
    await joined;
    assert.equal(room.position, undefined);
    sock.close(1011, "internal");
    await new Promise((r) => setTimeout(r, 20));
    sock = ScriptedSocket.last;
    assert.ok(sock);
    sock.deliver({ v: 1, svc: "sys", type: "authed", data: { tenant: "acme", user: "u", sid: "s2" } });
    const rejoin = sock.sent.at(-1);
    assert.equal(rejoin?.["type"], "join");
    assert.equal(rejoin?.["data"], undefined, "no since without a position");
    sock.deliver({ v: 1, svc: "sys", type: "joined", room: "plain", seq: rejoin?.["seq"], data: { room: "plain", peer: 2, members: 1 } });
    assert.deepEqual(resets, [{ room: "plain", reason: "no_history", position: undefined }]);
    assert.equal(room.info?.peer, 2);
    client.close();
  });

  it("reconnects at once when the browser reports the network back, and unhooks on close", async () => {
    const hooks = new Map<string, () => void>();
    const g = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
    g.addEventListener = (type: string, fn: () => void) => hooks.set(type, fn);
    g.removeEventListener = (type: string) => hooks.delete(type);
    try {
      const client = new WsprismClient({
        url: "ws://gw",
        tenant: "acme",
        getTicket: () => "t",
        WebSocket: ScriptedSocket,
        liveness: false,
        reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000, random: () => 0.99 },
      });
      const connected = client.connect();
      await new Promise((r) => setImmediate(r));
      const first = ScriptedSocket.last;
      assert.ok(first);
      first.deliver({ v: 1, svc: "sys", type: "authed", data: { tenant: "acme", user: "u", sid: "s1" } });
      await connected;
      first.close(1001, "draining");
      assert.equal(client.state, "waiting");
      const online = hooks.get("online");
      assert.ok(online, "listens for online");
      online();
      await new Promise((r) => setImmediate(r));
      assert.notEqual(ScriptedSocket.last, first, "a new attempt without waiting out the back-off");
      assert.equal(client.state, "connecting");
      client.close();
      assert.equal(hooks.size, 0);
    } finally {
      delete g.addEventListener;
      delete g.removeEventListener;
    }
  });

  it("probes at once after a timer ran late (the machine slept), not before", async () => {
    const client = new WsprismClient({
      url: "ws://gw",
      tenant: "acme",
      getTicket: () => "t",
      WebSocket: ScriptedSocket,
      // Long bounds: only the late-timer rule can send a probe within this test.
      liveness: { idleMs: 60_000, timeoutMs: 60_000 },
    });
    const connected = client.connect();
    await new Promise((r) => setImmediate(r));
    const sock = ScriptedSocket.last;
    assert.ok(sock);
    sock.deliver({ v: 1, svc: "sys", type: "authed", data: { tenant: "acme", user: "u", sid: "s" } });
    await connected;
    const realNow = Date.now;
    try {
      await new Promise((r) => setTimeout(r, 1_100)); // one ordinary tick (1 s)
      assert.deepEqual(sock.sent, [], "no probe while awake and within idleMs");
      const asleep = realNow();
      Date.now = () => realNow() + 120_000 + (realNow() - asleep);
      await new Promise((r) => setTimeout(r, 1_100));
      const probe = sock.sent[0];
      assert.equal(probe?.["svc"], "sys");
      assert.equal(probe?.["type"], "ping");
      assert.equal(typeof probe?.["seq"], "number");
      // Its answer is swallowed, not reported as an error.
      const errors: unknown[] = [];
      client.on("error", (e) => errors.push(e));
      sock.deliver({ v: 1, svc: "sys", type: "error", seq: probe?.["seq"], data: { code: "NOT_ALLOWED", msg: "no" } });
      assert.deepEqual(errors, []);
      assert.equal(client.state, "open");
    } finally {
      Date.now = realNow;
      client.close();
    }
  });
});
