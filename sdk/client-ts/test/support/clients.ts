/** SDK clients for tests: the `ws` package as the socket, fast back-off, cleanup. */

import WebSocket from "ws";

import { WsprismClient, type ClientEvents, type ClientOptions } from "../../src/index.js";

const made = new Set<WsprismClient>();

/** A client of tenant `acme` with `ticket`; closed by `closeClients()`. */
export function makeClient(url: string, ticket: string, extra: Partial<ClientOptions> = {}): WsprismClient {
  const client = new WsprismClient({
    url,
    tenant: "acme",
    getTicket: () => ticket,
    // `ws`'s class is used as is: this also checks that it fits the SDK's type.
    WebSocket,
    reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 },
    requestTimeoutMs: 5_000,
    ...extra,
  });
  made.add(client);
  return client;
}

export function closeClients(): void {
  for (const c of made) c.close();
  made.clear();
}

/** Records every event of `client` in order. */
export function record(client: WsprismClient): { [K in keyof ClientEvents]: ClientEvents[K][] } {
  const log = { state: [], connected: [], disconnected: [], stopped: [], message: [], hot: [], error: [], reset: [] } as {
    [K in keyof ClientEvents]: ClientEvents[K][];
  };
  for (const key of Object.keys(log) as (keyof ClientEvents)[]) {
    client.on(key, (payload) => (log[key] as unknown[]).push(payload));
  }
  return log;
}
