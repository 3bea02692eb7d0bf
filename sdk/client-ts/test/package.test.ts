// The published shape: ESM and CJS entry points through the package's own
// `exports`, declarations without internals, browser bundles that need nothing
// from Node, and no runtime dependencies.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
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
    const dts = readFileSync(dist("types/index.d.ts"), "utf8");
    assert.match(dts, /WsprismClient/);
    const room = readFileSync(dist("types/room.d.ts"), "utf8");
    assert.doesNotMatch(room, /^\s+_(dispatch|rejoin|resync|stopped|connectionLost)\(|interface RoomHost/m);
    assert.doesNotMatch(readFileSync(dist("types/client.d.ts"), "utf8"), /_inFlight/);
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
});
