// The browser bundle in headless Chromium: a page served from 127.0.0.1 loads
// dist/browser/wsprism.iife.js, connects to a real gateway with a ticket
// fetched per attempt, joins a room, receives a chat message and a stamped
// Hot Lane frame from a Node client, and writes the outcome into the DOM, which
// `chromium --dump-dom` prints. Skipped, with a message, when no Chromium is
// installed (scripts/test.sh installs it).

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, it } from "node:test";

import { closeClients, makeClient } from "./support/clients.js";
import { cleanupAll, Gateway, PACKAGE_ROOT, tempDir } from "./support/gateway.js";

after(async () => {
  closeClients();
  await cleanupAll();
});

function chromium(): string | undefined {
  for (const bin of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      execFileSync(bin, ["--version"], { stdio: "ignore", timeout: 20_000 });
      return bin;
    } catch {
      // not this one
    }
  }
  return undefined;
}

const page = (gatewayUrl: string): string => `<!doctype html>
<html><head><meta charset="utf-8"><title>wsprism client</title></head>
<body>
<pre id="result">pending</pre>
<script src="/wsprism.iife.js"></script>
<script>
(async () => {
  const out = document.getElementById("result");
  const report = async (text) => {
    out.textContent = text;
    await fetch("/done", { method: "POST", body: text });
  };
  try {
    const client = new WsPrism.WsprismClient({
      url: ${JSON.stringify(gatewayUrl)},
      tenant: "acme",
      getTicket: async () => (await fetch("/ticket")).text(),
    });
    const session = await client.connect();
    const room = client.room("browser");
    const message = new Promise((resolve) => room.on("message", resolve));
    const frame = new Promise((resolve) => client.on("hot", resolve));
    await room.join();
    await fetch("/joined", { method: "POST" });
    const m = await message;
    const f = await frame;
    await report("ok user=" + session.user + " msg=" + m.data.msg + " offset=" + m.offset +
      " peer=" + f.peer + " payload=" + Array.from(f.payload).join(","));
    client.close();
  } catch (e) {
    await report("error " + e);
  }
})();
</script>
<img src="/hold" alt="">
</body></html>`;

it("the browser bundle connects, joins, and receives a message and a stamped hot frame", async (t) => {
  const browser = chromium();
  if (browser === undefined) {
    t.skip("SKIPPED: no Chromium on this machine (scripts/test.sh installs it)");
    return;
  }
  const gw = await Gateway.start();
  const node = makeClient(gw.url, "t2");
  await node.connect();
  const nodeRoom = await node.join("browser");

  const bundle = readFileSync(path.join(PACKAGE_ROOT, "dist/browser/wsprism.iife.js"));
  let result = "";
  let release: () => void = () => undefined;
  const done = new Promise<void>((resolve) => {
    release = resolve;
  });
  const server = http.createServer((req, res) => {
    const body: Buffer[] = [];
    req.on("data", (c: Buffer) => body.push(c));
    req.on("end", () => {
      switch (req.url) {
        case "/page.html":
          res.writeHead(200, { "content-type": "text/html" }).end(page(gw.url));
          return;
        case "/wsprism.iife.js":
          res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
          return;
        case "/ticket":
          res.writeHead(200, { "content-type": "text/plain" }).end("t3");
          return;
        case "/joined":
          void nodeRoom.request("chat", "send", { msg: "from node" }).then(() => node.sendHot(1, 4, [1, 2, 3]));
          res.writeHead(204).end();
          return;
        case "/done":
          result = Buffer.concat(body).toString();
          res.writeHead(204).end();
          release();
          return;
        case "/hold":
          // Holds the page's load event (which --dump-dom waits for) until the
          // page has reported, so the DOM is dumped with its result.
          void done.then(() => res.writeHead(204).end());
          return;
        default:
          res.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  const port = typeof addr === "object" && addr !== null ? addr.port : 0;
  const timeout = setTimeout(release, 30_000); // never hold the page forever

  const profile = tempDir("chromium");
  const child = spawn(
    browser,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
      "--dump-dom",
      `http://127.0.0.1:${port}/page.html`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let dom = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (dom += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  clearTimeout(killer);
  clearTimeout(timeout);
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));

  assert.equal(code, 0, `chromium failed:\n${stderr.slice(-3000)}`);
  const expected = `ok user=u3 msg=from node offset=1 peer=${nodeRoom.info?.peer} payload=1,2,3`;
  assert.equal(result, expected, `the page reported: ${result}\nchromium: ${stderr.slice(-2000)}`);
  assert.ok(dom.includes(`<pre id="result">${expected}</pre>`), `DOM:\n${dom.slice(0, 3000)}`);
});
