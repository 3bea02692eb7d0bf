// Against a real gateway: connecting, requests and their errors, rooms and
// presence, chat and plugin messages, Hot Lane relay with stamped peers.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";

import { WsprismError, type Envelope, type HotFrame, type Member } from "../src/index.js";
import { closeClients, makeClient, record } from "./support/clients.js";
import { cleanupAll, Gateway, waitFor } from "./support/gateway.js";

let gw: Gateway;

before(async () => {
  gw = await Gateway.start({ plugins: true });
});
afterEach(() => closeClients());
after(async () => {
  closeClients();
  await cleanupAll();
});

describe("connecting", () => {
  it("resolves connect() with the sys.authed session", async () => {
    const c = makeClient(gw.url, "t1");
    const events = record(c);
    const session = await c.connect();
    assert.equal(session.tenant, "acme");
    assert.equal(session.user, "u1");
    assert.match(session.sid, /^[0-9a-f]+$/);
    assert.equal(c.state, "open");
    assert.deepEqual(events.state, ["connecting", "open"]);
    assert.equal(events.connected.length, 1);
    c.close();
    assert.equal(c.state, "stopped");
    assert.equal(events.stopped[0]?.code, "CLIENT_CLOSED");
  });

  it("calls getTicket for the attempt and reports a getTicket failure as retryable", async () => {
    let calls = 0;
    const c = makeClient(gw.url, "unused", {
      getTicket: () => {
        calls += 1;
        if (calls === 1) throw new Error("backend down");
        return "t2";
      },
    });
    const events = record(c);
    const session = await c.connect();
    assert.equal(session.user, "u2");
    assert.equal(calls, 2);
    assert.equal(events.error[0]?.code, "TICKET_FAILED");
    assert.equal(events.disconnected[0]?.willRetry, true);
  });

  it("refuses requests before connect()", async () => {
    const c = makeClient(gw.url, "t1");
    await assert.rejects(c.request("room", "presence", undefined, { room: "r" }), { code: "NOT_CONNECTED" });
  });
});

describe("requests", () => {
  it("resolve with the ack, and reject with the sys.error of the same seq", async () => {
    const c = makeClient(gw.url, "t1");
    await c.connect();
    const room = await c.join("req");
    const ack = await room.request("chat", "send", { msg: "hello" });
    assert.equal(ack.svc, "sys");
    assert.equal(ack.type, "ack");
    assert.equal(typeof ack.seq, "number");

    const notAllowed = await c.request("chat", "edit", { msg: "x" }, { room: "req" }).catch((e: unknown) => e);
    assert.ok(notAllowed instanceof WsprismError);
    assert.equal(notAllowed.code, "NOT_ALLOWED");
    assert.match(notAllowed.msg, /allowlist/);
    assert.equal(typeof notAllowed.seq, "number");

    const notInRoom = await c.request("chat", "send", { msg: "x" }, { room: "elsewhere" }).catch((e: unknown) => e);
    assert.ok(notInRoom instanceof WsprismError);
    assert.equal(notInRoom.code, "NOT_IN_ROOM");
    // Nothing is left in flight.
    assert.deepEqual(c._inFlight, { pending: 0, queued: 0 });
  });

  it("carries a plugin's own refusal code as reason", async () => {
    const c = makeClient(gw.url, "t2");
    await c.connect();
    const errors: Envelope[] = [];
    c.on("message", (m) => {
      if (m.svc === "sys" && m.type === "error") errors.push(m);
    });
    const room = await c.join("poll");
    await room.request("vote", "cast", { option: "a" });
    const err = await room.request("vote", "cast", { option: "b" }).catch((e: unknown) => e);
    assert.ok(err instanceof WsprismError);
    assert.equal(err.code, "SERVICE_ERROR");
    assert.equal(err.reason, "ALREADY_VOTED");
    // The gateway sends the plugin's code as data.reason.
    assert.equal((errors[0]?.data as { reason?: unknown } | undefined)?.reason, "ALREADY_VOTED");
  });

  it("reports UNKNOWN_SERVICE for an allowed svc nobody serves", async () => {
    const c = makeClient(gw.url, "t1");
    await c.connect();
    await assert.rejects(c.request("ghost", "x"), { code: "UNKNOWN_SERVICE", name: "WsprismError" });
    await assert.rejects(c.request("nope", "x"), { code: "NOT_ALLOWED" });
  });

  it("resolves a plugin request and delivers the plugin's reply as a message", async () => {
    const c = makeClient(gw.url, "t1");
    await c.connect();
    const replies: Envelope[] = [];
    c.on("message", (m) => {
      if (m.svc === "echo") replies.push(m);
    });
    const ack = await c.request("echo", "hello", { n: 1 });
    assert.equal(ack.type, "ack");
    await waitFor("echo reply", () => replies[0]);
    assert.deepEqual(replies[0]?.data, { n: 1 });
  });
});

describe("rooms", () => {
  it("join, member events, chat messages with offsets, presence, leave", async () => {
    const a = makeClient(gw.url, "t1");
    const b = makeClient(gw.url, "t3");
    await Promise.all([a.connect(), b.connect()]);
    const ra = a.room("lobby");
    const joinedA: Member[] = [];
    const leftA: Member[] = [];
    const msgs: Envelope[] = [];
    ra.on("member_joined", (m) => joinedA.push(m));
    ra.on("member_left", (m) => leftA.push(m));
    ra.on("message", (m) => msgs.push(m));
    await ra.join();
    assert.equal(ra.state, "joined");
    assert.equal(ra.info?.members, 1);
    assert.equal(ra.info?.peer, 1);
    assert.equal(ra.position?.offset, 0);
    const epoch = ra.position?.epoch;
    assert.equal(typeof epoch, "string");

    const rb = await b.join("lobby");
    assert.equal(rb.info?.members, 2);
    await waitFor("member_joined", () => joinedA[0]);
    assert.deepEqual(joinedA[0], { user: "u3", peer: 2 });

    await rb.request("chat", "send", { msg: "hi all" });
    await waitFor("chat msg", () => msgs[0]);
    assert.equal(msgs[0]?.svc, "chat");
    assert.deepEqual(msgs[0]?.data, { from: "u3", msg: "hi all" });
    assert.deepEqual(ra.position, { epoch, offset: 1 });

    const presence = await a.presence("lobby");
    assert.deepEqual(presence, { users: ["u1", "u3"], truncated: false });

    await b.leave("lobby");
    assert.equal(rb.state, "left");
    await waitFor("member_left", () => leftA[0]);
    assert.deepEqual(leftA[0], { user: "u3", peer: 2 });
    await assert.rejects(rb.presence(), { code: "NOT_IN_ROOM" });
    assert.deepEqual(a.rooms().map((r) => r.name), ["lobby"]);
    assert.deepEqual(b.rooms(), []);
  });

  it("rejects a join the gateway refuses and forgets the room", async () => {
    const gw2 = await Gateway.start({
      tenants: [{ id: "acme", auth: { mode: "static", tickets: { t1: "u1" } }, policy: { ext_allowlist: ["chat:send"] } }],
    });
    const c = makeClient(gw2.url, "t1");
    await c.connect();
    const room = c.room("r");
    await assert.rejects(room.join(), { code: "NOT_ALLOWED" });
    assert.equal(room.state, "left");
    assert.deepEqual(c.rooms(), []);
    c.close();
    await gw2.stop();
  });
});

describe("hot lane", () => {
  it("relays frames to the room with the sender's stamped peer, and echoes", async () => {
    const a = makeClient(gw.url, "t1");
    const b = makeClient(gw.url, "t4");
    await Promise.all([a.connect(), b.connect()]);
    const ra = await a.join("arena");
    const rb = await b.join("arena");
    const got: HotFrame[] = [];
    b.on("hot", (f) => got.push(f));
    assert.equal(a.sendHot(1, 9, new Uint8Array([10, 20, 30]), 0x05), true);
    const f = await waitFor("relayed frame", () => got[0]);
    assert.equal(f.svcId, 1);
    assert.equal(f.opcode, 9);
    assert.equal(f.flags, 0x05);
    assert.equal(f.peer, ra.info?.peer);
    assert.notEqual(f.peer, rb.info?.peer);
    assert.deepEqual([...f.payload], [10, 20, 30]);

    const echoed: HotFrame[] = [];
    a.on("hot", (fr) => echoed.push(fr));
    a.sendHot(2, 1, [7, 7]);
    const e = await waitFor("echoed frame", () => echoed[0]);
    assert.deepEqual({ svcId: e.svcId, opcode: e.opcode, flags: e.flags, peer: e.peer, payload: [...e.payload] }, { svcId: 2, opcode: 1, flags: 0, peer: undefined, payload: [7, 7] });
    assert.throws(() => a.sendHot(1, 1, [], 0x80), RangeError);
  });
});
