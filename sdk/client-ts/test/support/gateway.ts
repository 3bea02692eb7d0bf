/**
 * Test harness: real wsPrism gateway processes on loopback ports, a pausable TCP
 * proxy in front of them, and small waiting helpers.
 *
 * Every process and temp dir made here is registered and removed by
 * `cleanupAll()` (each test file calls it in `after`), and again on process exit
 * so that a crashed test run leaves no gateway behind.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The package root (sdk/client-ts); tests run from build/test/support. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
/** The repository root. */
export const REPO_ROOT = path.resolve(PACKAGE_ROOT, "../..");

/** The gateway binary: `$WSPRISM_BIN`, else the workspace's debug build. */
export function gatewayBinary(): string {
  const bin = process.env["WSPRISM_BIN"] ?? path.join(REPO_ROOT, "target/debug/wsprism");
  if (!existsSync(bin)) {
    throw new Error(`gateway binary ${bin} not found: build it (cargo build) or set WSPRISM_BIN to a wsprism binary`);
  }
  return bin;
}

const live = new Set<Gateway>();
const tempDirs = new Set<string>();
const proxies = new Set<Proxy>();

/** Synchronous last-resort cleanup: kill every gateway, remove every temp dir. */
function cleanupNow(): void {
  for (const gw of live) gw.child?.kill("SIGKILL");
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
}
process.on("exit", cleanupNow);
// A run stopped from outside (Ctrl-C, a timeout) cleans up too.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    cleanupNow();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

/** A free loopback TCP port (bound, read and released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A temp dir removed by `cleanupAll()`. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `wsprism-client-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

/** One tenant's YAML, as a plain object. */
export interface TenantConfig {
  id: string;
  [key: string]: unknown;
}

/** Server API key of the test tenant. */
export const API_KEY = "test-api-key-0123456789";

/** The tenant the tests share unless they need another. */
export function acme(overrides: Record<string, unknown> = {}): TenantConfig {
  return {
    id: "acme",
    api_keys: [API_KEY],
    auth: { mode: "static", tickets: { t1: "u1", t2: "u2", t3: "u3", t4: "u4" } },
    policy: {
      ext_allowlist: ["room:*", "chat:send", "echo:*", "vote:*", "ghost:*"],
      hot_allowlist: ["1:*", "2:*"],
      rate_limit_burst: 1000,
    },
    rooms: { presence_events: true, history_size: 100, history_ttl_ms: 600000 },
    routes: [
      { svc: "echo", plugin: "echo" },
      { svc: "vote", plugin: "vote" },
    ],
    hot_services: [
      { id: 1, kind: "relay", stamp_sender: true },
      { id: 2, kind: "echo" },
    ],
    ...overrides,
  };
}

export interface GatewayOptions {
  tenants?: TenantConfig[];
  /** Load the repository's demo plugins (echo, vote). */
  plugins?: boolean;
  gateway?: Record<string, unknown>;
}

/** A gateway process; `restart()` keeps its ports. */
export class Gateway {
  child: ChildProcess | undefined;
  log = "";
  readonly port: number;
  readonly adminPort: number;
  readonly #configFile: string;
  #startupMs = 30_000;

  private constructor(port: number, adminPort: number, configFile: string) {
    this.port = port;
    this.adminPort = adminPort;
    this.#configFile = configFile;
  }

  /** Writes a config for free ports and starts the gateway on it. */
  static async start(opts: GatewayOptions = {}): Promise<Gateway> {
    const [port, adminPort] = [await freePort(), await freePort()];
    const dir = tempDir("gw");
    const config = {
      version: 1,
      gateway: {
        listen: `127.0.0.1:${port}`,
        admin_listen: `127.0.0.1:${adminPort}`,
        drain_grace_ms: 500,
        handshake_limit: { enabled: false },
        plugins: opts.plugins === true ? { dir: path.join(REPO_ROOT, "plugins"), watch: false } : { dir: path.join(dir, "plugins"), watch: false },
        ...opts.gateway,
      },
      tenants: opts.tenants ?? [acme()],
    };
    // JSON is YAML: the gateway's YAML parser reads it as is.
    const file = path.join(dir, "wsprism.yaml");
    writeFileSync(file, JSON.stringify(config, null, 2));
    const gw = new Gateway(port, adminPort, file);
    live.add(gw);
    // Plugins are compiled before the gateway listens; a debug build compiles slowly.
    gw.#startupMs = opts.plugins === true ? 90_000 : 30_000;
    await gw.#spawn();
    return gw;
  }

  /** `ws://127.0.0.1:PORT`. */
  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  async #spawn(): Promise<void> {
    const child = spawn(gatewayBinary(), ["--config", this.#configFile], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env["RUST_LOG"] ?? "warn", NO_COLOR: "1" },
    });
    this.child = child;
    const keep = (chunk: Buffer): void => {
      this.log = (this.log + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    const exited = new Promise<never>((_, reject) => {
      child.once("exit", (code, signal) => reject(new Error(`gateway exited (${code ?? signal}) during startup:\n${this.log}`)));
    });
    exited.catch(() => undefined);
    await Promise.race([waitForHealth(this.port, this.#startupMs), exited]);
  }

  /** Kills the process (SIGKILL: no drain, sessions see the TCP connection drop) and waits for it. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await gone;
  }

  /** Starts it again on the same ports and config. */
  async restart(): Promise<void> {
    await this.kill();
    await this.#spawn();
  }

  /** POSTs `body` to the server API path `/v1/api/tenants/acme/<path>`. */
  async api(path: string, body: unknown): Promise<unknown> {
    const res = await fetch(`http://127.0.0.1:${this.adminPort}/v1/api/tenants/acme/${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json: unknown = await res.json();
    if (!res.ok) throw new Error(`server API ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  /** Kills it and forgets it. */
  async stop(): Promise<void> {
    await this.kill();
    live.delete(this);
  }
}

async function waitForHealth(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`gateway on ${port} not healthy within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * A TCP proxy on a loopback port in front of a gateway. `pause()` stops
 * forwarding on the open connections without closing them (a socket that died
 * silently, as after a laptop sleep); `cut()` drops them (a network failure);
 * `refuse(true)` closes new connections at once.
 */
export class Proxy {
  readonly port: number;
  readonly #server: net.Server;
  readonly #pairs = new Set<[net.Socket, net.Socket]>();
  readonly #frozen = new WeakSet<net.Socket>();
  #refusing = false;
  connections = 0;

  private constructor(server: net.Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  static async start(targetPort: number): Promise<Proxy> {
    let proxy: Proxy | undefined;
    const server = net.createServer((client) => {
      if (proxy === undefined) client.destroy();
      else proxy.#accept(client, targetPort);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const addr = server.address();
    proxy = new Proxy(server, typeof addr === "object" && addr !== null ? addr.port : 0);
    proxies.add(proxy);
    return proxy;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  #accept(client: net.Socket, targetPort: number): void {
    if (this.#refusing) {
      client.destroy();
      return;
    }
    this.connections += 1;
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.#pairs.add(pair);
    const forward = (from: net.Socket, to: net.Socket): void => {
      from.on("data", (chunk) => {
        if (!this.#frozen.has(from)) to.write(chunk);
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    const end = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  }

  /** Swallows all traffic of the connections open now; later connections flow. */
  pause(): void {
    for (const [a, b] of this.#pairs) {
      this.#frozen.add(a);
      this.#frozen.add(b);
    }
  }

  /** Destroys every open connection. */
  cut(): void {
    for (const [a, b] of this.#pairs) {
      a.destroy();
      b.destroy();
    }
    this.#pairs.clear();
  }

  refuse(on: boolean): void {
    this.#refusing = on;
  }

  async close(): Promise<void> {
    this.cut();
    proxies.delete(this);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** Stops every gateway and proxy and removes every temp dir. */
export async function cleanupAll(): Promise<void> {
  await Promise.all([...proxies].map((p) => p.close()));
  await Promise.all([...live].map((g) => g.stop()));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a value other than `undefined`/`false`. */
export async function waitFor<T>(what: string, check: () => T | undefined | false, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
