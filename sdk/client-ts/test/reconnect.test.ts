// Against a real gateway: reconnecting after a restart and a network cut,
// automatic rejoin with `since`, recovery of missed messages, requests across
// disconnects, the liveness check, and final close codes.

import assert from "node:assert/strict";
import { after, afterEach, describe, it } from "node:test";

import { CloseCode, type Envelope, type JoinInfo, type ResetInfo } from "../src/index.js";
import { closeClients, makeClient, record } from "./support/clients.js";
import { cleanupAll, Gateway, Proxy, sleep, waitFor } from "./support/gateway.js";

afterEach(() => closeClients());
after(async () => {
  closeClients();
  await cleanupAll();
});

/** The chat texts among `msgs`. */
const texts = (msgs: Envelope[]): unknown[] => msgs.map((m) => (m.data as { msg?: unknown } | undefined)?.msg ?? m.data);

describe("reconnect", () => {
  it("reconnects after the gateway restarts on the same port and rejoins its rooms", async () => {
    const gw = await Gateway.start();
    const a = makeClient(gw.url, "t1");
    const events = record(a);
    await a.connect();
    const resets: ResetInfo[] = [];
    const joins: JoinInfo[] = [];
    const room = a.room("r", { onReset: (info) => resets.push(info) });
    room.on("joined", (j) => joins.push(j));
    await room.join();
    const before = room.position;
    assert.ok(before !== undefined, "history is on: sys.joined carries a position");

    await gw.restart();
    await waitFor("second session", () => events.connected.length === 2, 15_000);
    await waitFor("rejoin", () => joins.length === 2);
    assert.equal(events.disconnected[0]?.willRetry, true);
    assert.equal(events.disconnected[0]?.code, CloseCode.Abnormal);
    assert.deepEqual(events.stopped, []);
    assert.equal(joins[1]?.rejoin, true);
    // A restarted gateway (local mode) lost its history: a new epoch, so the
    // rejoin's since cannot be served and the application must reload.
    assert.equal(joins[1]?.recovered, false);
    assert.notEqual(room.position?.epoch, before.epoch);
    assert.deepEqual(resets, [{ room: "r", reason: "not_recovered", position: room.position }]);
    assert.deepEqual(events.reset, resets);

    // The membership is real: another member's chat reaches the rejoined client.
    const msgs: Envelope[] = [];
    room.on("message", (m) => msgs.push(m));
    const b = makeClient(gw.url, "t2");
    await b.connect();
    await (await b.join("r")).request("chat", "send", { msg: "after restart" });
    await waitFor("chat after restart", () => msgs[0]);
    assert.deepEqual(texts(msgs), ["after restart"]);
    assert.deepEqual((await a.presence("r")).users, ["u1", "u2"]);
    await gw.stop();
  });

  it("recovers what was published while it was away, in order, then sends queued requests", async () => {
    const gw = await Gateway.start();
    const proxy = await Proxy.start(gw.port);
    const a = makeClient(proxy.url, "t1");
    const events = record(a);
    await a.connect();
    const ra = a.room("news");
    const msgs: Envelope[] = [];
    const joins: JoinInfo[] = [];
    ra.on("message", (m) => msgs.push(m));
    ra.on("joined", (j) => joins.push(j));
    await ra.join();
    const b = makeClient(gw.url, "t2");
    await b.connect();
    const rb = await b.join("news");
    await rb.request("chat", "send", { msg: "one" });
    await waitFor("first message", () => msgs.length === 1);
    const epoch = ra.position?.epoch;

    // The network goes away: the connection drops and new ones fail.
    proxy.refuse(true);
    proxy.cut();
    await waitFor("disconnected", () => events.disconnected.length >= 1);
    assert.equal(a.state === "waiting" || a.state === "connecting", true);
    // A request made while away waits for the next session.
    const queued = ra.request("chat", "send", { msg: "from a, sent while away" }, 15_000);
    for (const t of ["two", "three"]) await rb.request("chat", "send", { msg: t });
    await gw.api("publish", { room: "news", svc: "news", type: "headline", data: "four" });
    await sleep(300); // a few refused attempts
    assert.ok(events.disconnected.length >= 2, "it kept retrying while the network was down");
    proxy.refuse(false);

    const ack = await queued;
    assert.equal(ack.type, "ack");
    await waitFor("recovered + own message", () => msgs.length === 5);
    assert.deepEqual(texts(msgs), ["one", "two", "three", "four", "from a, sent while away"]);
    assert.deepEqual(
      msgs.map((m) => m.offset),
      [1, 2, 3, 4, 5],
    );
    assert.equal(joins.length, 2);
    assert.equal(joins[1]?.recovered, true);
    assert.deepEqual(ra.position, { epoch, offset: 5 });
    assert.deepEqual(events.reset, [], "a recovered room needs no reset");
    assert.equal(events.connected.length, 2);
    await proxy.close();
    await gw.stop();
  });

  it("rejects requests in flight when the connection drops, and times out unanswered ones", async () => {
    const gw = await Gateway.start();
    const proxy = await Proxy.start(gw.port);
    const a = makeClient(proxy.url, "t1", { liveness: false });
    await a.connect();
    const room = await a.join("r");
    proxy.pause(); // the socket stays open but nothing gets through
    const timedOut = room.request("chat", "send", { msg: "x" }, 300);
    await assert.rejects(timedOut, { code: "TIMEOUT" });
    const inFlight = room.request("chat", "send", { msg: "y" }, 10_000);
    await sleep(50);
    assert.equal(a._inFlight.pending, 1);
    proxy.cut();
    await assert.rejects(inFlight, { code: "CONNECTION_LOST" });
    assert.deepEqual(a._inFlight, { pending: 0, queued: 0 });
    await proxy.close();
    await gw.stop();
  });
});

describe("liveness", () => {
  it("stays connected while a quiet session answers its probes", async () => {
    const gw = await Gateway.start();
    const a = makeClient(gw.url, "t1", { liveness: { idleMs: 200, timeoutMs: 300 } });
    const events = record(a);
    const probes: Envelope[] = [];
    a.on("message", (m) => {
      if (m.svc === "sys" && m.type === "pong") probes.push(m);
    });
    await a.connect();
    await sleep(1_200);
    assert.ok(probes.length >= 2, `probes were answered (${probes.length})`);
    assert.deepEqual(events.disconnected, []);
    assert.deepEqual(events.error, [], "probe answers are not reported as errors");
    await gw.stop();
  });

  it("drops a socket that went silent and reconnects", async () => {
    const gw = await Gateway.start();
    const proxy = await Proxy.start(gw.port);
    const a = makeClient(proxy.url, "t1", { liveness: { idleMs: 200, timeoutMs: 300 } });
    const events = record(a);
    await a.connect();
    const room = await a.join("r");
    proxy.pause(); // as after a laptop sleep: no close, no data
    await waitFor("second session", () => events.connected.length === 2, 5_000);
    assert.equal(events.disconnected[0]?.code, CloseCode.LivenessTimeout);
    assert.match(events.disconnected[0]?.reason ?? "", /liveness/);
    await waitFor("rejoined", () => room.state === "joined" && room.info?.rejoin === true);
    await proxy.close();
    await gw.stop();
  });
});

describe("final closes", () => {
  it("stops on 4004 (disconnected by the server API) without reconnecting", async () => {
    const gw = await Gateway.start();
    const a = makeClient(gw.url, "t1");
    const events = record(a);
    await a.connect();
    await a.join("r");
    assert.deepEqual(await gw.api("users/u1/disconnect", { reason: "maintenance" }), { disconnected: 1 });
    await waitFor("stopped", () => events.stopped[0]);
    assert.equal(events.stopped[0]?.code, "SESSION_ENDED");
    assert.equal(events.stopped[0]?.closeCode, 4004);
    assert.equal(a.state, "stopped");
    assert.deepEqual(a.rooms(), []);
    await sleep(500);
    assert.equal(events.connected.length, 1, "no reconnect");
    await assert.rejects(a.request("room", "presence", undefined, { room: "r" }), { code: "SESSION_ENDED" });
    await gw.stop();
  });

  it("stops on 4001 when a newer session of the user replaces it", async () => {
    const gw = await Gateway.start({
      tenants: [
        {
          id: "acme",
          auth: { mode: "static", tickets: { t1: "u1" } },
          policy: { ext_allowlist: ["room:*"], sessions: { mode: "single", max_sessions_per_user: 1, on_exceed: "kick_oldest" } },
        },
      ],
    });
    const old = makeClient(gw.url, "t1");
    const events = record(old);
    await old.connect();
    const newer = makeClient(gw.url, "t1");
    await newer.connect();
    await waitFor("stopped", () => events.stopped[0]);
    assert.equal(events.stopped[0]?.code, "SESSION_ENDED");
    assert.equal(events.stopped[0]?.closeCode, CloseCode.Replaced);
    assert.ok(events.message.some((m) => m.svc === "sys" && m.type === "kicked"));
    await sleep(500);
    assert.equal(newer.state, "open", "the old client did not come back and kick the newer one");
    await gw.stop();
  });
});
