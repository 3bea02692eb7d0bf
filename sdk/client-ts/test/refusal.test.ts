// Against a real gateway: refused connections. With `refusal=close` (the
// client's default) a refused upgrade is closed with 4000 + status, so the
// client can tell a final refusal (stop) from a retryable one (back off).
// Without it a refusal is a plain HTTP answer that browsers cannot read: the
// client then retries, unless a handshake hook reports the status.

import assert from "node:assert/strict";
import { after, afterEach, describe, it } from "node:test";

import { wsHandshakeInspector, type WsprismError } from "../src/index.js";
import { closeClients, makeClient, record } from "./support/clients.js";
import { acme, cleanupAll, Gateway, sleep, waitFor } from "./support/gateway.js";

afterEach(() => closeClients());
after(async () => {
  closeClients();
  await cleanupAll();
});

/** A client whose getTicket calls are counted. */
function counted(url: string, ticket: string, tenant: string, extra: Parameters<typeof makeClient>[2] = {}) {
  const calls = { n: 0 };
  const client = makeClient(url, ticket, {
    tenant,
    getTicket: () => {
      calls.n += 1;
      return ticket;
    },
    ...extra,
  });
  return { client, calls };
}

describe("final refusals stop the client", () => {
  for (const [name, tenant, ticket, closeCode, status] of [
    ["unknown tenant", "nope", "t1", 4404, 404],
    ["bad ticket", "acme", "wrong", 4401, 401],
  ] as const) {
    it(`${name}: closed with ${closeCode}, no retry`, async () => {
      const gw = await Gateway.start();
      const { client, calls } = counted(gw.url, ticket, tenant);
      const events = record(client);
      const err = (await client.connect().catch((e: unknown) => e)) as WsprismError;
      assert.equal(err.code, "REFUSED");
      assert.equal(err.closeCode, closeCode);
      assert.equal(err.status, status);
      assert.equal(client.state, "stopped");
      assert.deepEqual(
        events.disconnected.map((d) => [d.code, d.status, d.willRetry]),
        [[closeCode, status, false]],
      );
      assert.equal(events.stopped.length, 1);
      await sleep(600); // several back-off periods of the test client
      assert.equal(calls.n, 1, "one attempt only");
      assert.equal(events.connected.length, 0);
      await gw.stop();
    });
  }

  it("user at its session cap: closed with 4409, no retry", async () => {
    const gw = await Gateway.start({
      tenants: [acme({ policy: { ext_allowlist: ["room:*"], sessions: { mode: "single", max_sessions_per_user: 1, on_exceed: "deny" } } })],
    });
    const first = makeClient(gw.url, "t1");
    await first.connect();
    const { client, calls } = counted(gw.url, "t1", "acme");
    const err = (await client.connect().catch((e: unknown) => e)) as WsprismError;
    assert.equal(err.code, "REFUSED");
    assert.equal(err.closeCode, 4409);
    await sleep(400);
    assert.equal(calls.n, 1);
    assert.equal(first.state, "open");
    await gw.stop();
  });

  it("without refusal=close, a hook that reports the HTTP status stops it too", async () => {
    const gw = await Gateway.start();
    const { client, calls } = counted(gw.url, "t1", "nope", { refusalClose: false, inspectHandshake: wsHandshakeInspector });
    const err = (await client.connect().catch((e: unknown) => e)) as WsprismError;
    assert.equal(err.code, "REFUSED");
    assert.equal(err.status, 404);
    assert.equal(err.closeCode, 1006, "a plain HTTP refusal has no close code of its own");
    await sleep(400);
    assert.equal(calls.n, 1);
    await gw.stop();
  });
});

describe("retryable refusals back off", () => {
  it("a plain HTTP refusal without a hook looks like a network failure and is retried", async () => {
    const gw = await Gateway.start();
    const { client, calls } = counted(gw.url, "t1", "nope", { refusalClose: false });
    const events = record(client);
    void client.connect().catch(() => undefined);
    await waitFor("three attempts", () => calls.n >= 3, 5_000);
    assert.ok(events.disconnected.every((d) => d.code === 1006 && d.willRetry && d.status === undefined));
    assert.deepEqual(events.stopped, []);
    client.close();
    assert.equal(client.state, "stopped");
    await gw.stop();
  });

  it("4429 (handshake rate limit) is retried after a back-off, then connects", async () => {
    const gw = await Gateway.start({
      gateway: { handshake_limit: { enabled: true, global_rps: 100, global_burst: 100, per_ip_rps: 2, per_ip_burst: 1 } },
    });
    const first = makeClient(gw.url, "t1");
    await first.connect();
    const second = makeClient(gw.url, "t2", { reconnect: { initialDelayMs: 300, maxDelayMs: 1_000 } });
    const events = record(second);
    const session = await second.connect();
    assert.equal(session.user, "u2");
    const limited = events.disconnected.filter((d) => d.code === 4429);
    assert.ok(limited.length >= 1, `saw ${JSON.stringify(events.disconnected)}`);
    assert.ok(limited.every((d) => d.willRetry && d.status === 429 && (d.retryInMs ?? 0) >= 300));
    await gw.stop();
  });
});
