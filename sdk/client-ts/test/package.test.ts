// The published shape: ESM and CJS entry points through the package's own
// `exports`, declarations without internals, browser bundles that need nothing
// from Node, and no runtime dependencies.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import vm from "node:vm";

import { PACKAGE_ROOT } from "./support/gateway.js";

const dist = (p: string): string => path.join(PACKAGE_ROOT, "dist", p);
const API = ["WsprismClient", "Room", "WsprismError", "encodeHot", "decodeHot", "wsHandshakeInspector", "CloseCode", "backoffDelay"];

describe("package", () => {
  it("has no runtime dependencies", () => {
    const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as Record<string, unknown>;
    assert.equal(pkg["dependencies"], undefined);
    assert.equal(pkg["peerDependencies"], undefined);
  });

  it("imports as ESM and requires as CJS by its name", async () => {
    const esm = (await import("@wsprism/client")) as Record<string, unknown>;
    const require = createRequire(path.join(PACKAGE_ROOT, "package.json"));
    const cjs = require("@wsprism/client") as Record<string, unknown>;
    for (const name of API) {
      assert.equal(typeof esm[name], typeof cjs[name], name);
      assert.notEqual(esm[name], undefined, name);
    }
    const encode = cjs["encodeHot"] as (a: number, b: number, p: number[]) => Uint8Array;
    assert.deepEqual([...encode(1, 2, [3])], [1, 2, 0, 3]);
  });

  it("ships declarations without internals", () => {
    const dts = readFileSync(dist("esm/index.d.ts"), "utf8");
    assert.match(dts, /WsprismClient/);
    const room = readFileSync(dist("esm/room.d.ts"), "utf8");
    assert.doesNotMatch(room, /^\s+_(dispatch|rejoin|resync|stopped|connectionLost)\(|interface RoomHost/m);
    assert.doesNotMatch(readFileSync(dist("esm/client.d.ts"), "utf8"), /_inFlight/);
    assert.match(room, /presence\(timeoutMs\?: number\): Promise<Presence>/);
  });

  it("browser bundles run without Node: the IIFE defines WsPrism, the ESM bundle exports the API", async () => {
    const iife = readFileSync(dist("browser/wsprism.iife.js"), "utf8");
    assert.doesNotMatch(iife, /\brequire\(|process\.env/);
    const sandbox: Record<string, unknown> = { URL, TextEncoder, queueMicrotask, setTimeout, clearTimeout, setInterval, clearInterval };
    vm.runInNewContext(iife, sandbox);
    const lib = sandbox["WsPrism"] as Record<string, unknown> | undefined;
    assert.ok(lib, "global WsPrism");
    for (const name of API) assert.notEqual(lib[name], undefined, name);
    const esm = (await import(pathToFileURL(dist("browser/wsprism.esm.js")).href)) as Record<string, unknown>;
    for (const name of API) assert.notEqual(esm[name], undefined, name);
  });

  it("type-checks for ESM and CommonJS consumers through the exports map", () => {
    // Inside the package, so that "@wsprism/client" resolves to itself.
    const dir = path.join(PACKAGE_ROOT, "build", "consumer");
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      path.join(dir, "esm.mts"),
      [
        'import WebSocket from "ws";',
        'import { WsprismClient, wsHandshakeInspector, type Room, type HotFrame } from "@wsprism/client";',
        'const c = new WsprismClient({ url: "ws://x", tenant: "t", getTicket: async () => "k", WebSocket, inspectHandshake: wsHandshakeInspector });',
        'const r: Promise<Room> = c.join("r");',
        'c.on("hot", (f: HotFrame) => f.peer);',
        "// @ts-expect-error internals are not part of the published types",
        "c._inFlight;",
        "export { r };",
      ].join("\n"),
    );
    writeFileSync(
      path.join(dir, "cjs.cts"),
      ['import sdk = require("@wsprism/client");', 'export const e: sdk.WsprismError = new sdk.WsprismError("TIMEOUT", "x");'].join("\n"),
    );
    writeFileSync(
      path.join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { module: "Node16", moduleResolution: "Node16", target: "ES2022", lib: ["ES2022"], types: ["node"], strict: true, noEmit: true },
        files: ["esm.mts", "cjs.cts"],
      }),
    );
    const tsc = path.join(PACKAGE_ROOT, "node_modules", "typescript", "bin", "tsc");
    try {
      execFileSync(process.execPath, [tsc, "-p", dir], { encoding: "utf8", stdio: "pipe" });
    } catch (err) {
      const out = err as { stdout?: string; stderr?: string };
      assert.fail(`consumer type-check failed:\n${out.stdout ?? ""}${out.stderr ?? ""}`);
    }
  });
});
