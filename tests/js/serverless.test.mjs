// Serverless hubs declared only in a configuration file, end to end through
// the binary: a Node upstream started by the test verifies every signature,
// answers invocations and drives clients back through the REST API; the
// official client connects with a token made by `tidings token`; an
// upstream that is down or slow gives a clear Completion error at once.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac, timingSafeEqual } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startServer, connect, next, rejectsWith } from "./helpers.mjs";
import { freePort, until } from "./cluster.mjs";
import { ACCESS_KEY, rest } from "./rest.mjs";

const BIN = process.env.TIDINGS_BIN ?? new URL("../../target/debug/tidings", import.meta.url).pathname;
const run = promisify(execFile);

let upstream;
let server;
const seen = [];

/** Whether `header` holds a valid X-Tidings-Signature of `body` at `timestamp`. */
function verify(header, timestamp, body) {
  if (!header || !timestamp || Math.abs(Date.now() / 1000 - Number(timestamp)) > 300) return false;
  const expected = createHmac("sha256", ACCESS_KEY).update(`${timestamp}.`).update(body).digest();
  return header.split(",").some((entry) => {
    const hex = entry.trim().replace(/^sha256=/, "");
    const given = Buffer.from(hex, "hex");
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

/** The backend: answers /tidings/{hub}/{category}/{event}. */
async function startUpstream() {
  const app = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks);
    const [, , hub, category, event] = req.url.split("/");
    const signed = verify(req.headers["x-tidings-signature"], req.headers["x-tidings-timestamp"], raw);
    const body = JSON.parse(raw.toString());
    seen.push({ hub, category, event, body, signed, headers: req.headers });
    const json = (status, value) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(value));
    };
    if (!signed) return json(401, { error: "bad signature" });
    if (category === "connections") return json(200, {});
    const args = body.arguments;
    switch (event) {
      case "Add":
        return json(200, args[0] + args[1]);
      case "Whoami":
        return json(200, { connectionId: body.connectionId, userId: body.userId, role: body.claims.role });
      case "Shout": {
        // The backend answers through the REST API: to every client.
        const sent = await rest(server, "POST", `/api/hubs/${hub}/:send`, {
          body: { target: "Shouted", arguments: [body.userId, args[0]] },
        });
        return json(200, sent.status);
      }
      case "Refuse":
        return json(403, { error: "not in this room" });
      case "Slow":
        setTimeout(() => json(200, "late"), 3000);
        return undefined;
      default:
        return json(404, { error: `no method ${event}` });
    }
  });
  await new Promise((resolve) => app.listen(0, "127.0.0.1", resolve));
  return app;
}

before(async () => {
  upstream = await startUpstream();
  const down = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "tidings-serverless-"));
  const config = join(dir, "tidings.toml");
  writeFileSync(
    config,
    `
[auth]
access_keys = ["${ACCESS_KEY}"]

[hubs.game]
upstream = "backend"
transports = ["WebSockets", "LongPolling"]

[hubs.offline]
upstream = "http://127.0.0.1:${down}/{hub}/{event}"

[upstreams.backend]
url = "http://127.0.0.1:${upstream.address().port}/tidings/{hub}/{category}/{event}"
timeout = "1s"
`,
  );
  const check = await run(BIN, ["check-config", "--config", config]);
  assert.match(check.stdout, /configuration OK: .*game \(serverless\), offline \(serverless\)/);
  server = await startServer(["--config", config]);
});
after(async () => {
  await server?.stop();
  upstream?.closeAllConnections();
  await new Promise((resolve) => upstream?.close(resolve) ?? resolve());
});

async function clientToken(user, role) {
  const { stdout } = await run(BIN, ["token", "--hub", "game", "--user", user, "--role", role, "--ttl", "10m", "--access-key", ACCESS_KEY]);
  return stdout.trim();
}

test("invocations round-trip through the upstream; connects and disconnects are posted, signed", async () => {
  for (const [transport, protocol] of [
    ["WebSockets", "json"],
    ["WebSockets", "messagepack"],
    ["LongPolling", "json"],
  ]) {
    const user = `ann-${transport}-${protocol}`;
    const client = await connect(server, "/hubs/game", protocol, { transport, token: await clientToken(user, "Admin") });
    try {
      assert.equal(await client.invoke("Add", 2, 40), 42);
      const me = await client.invoke("Whoami");
      assert.equal(me.userId, user);
      assert.equal(me.role, "Admin");
      assert.equal(client.connectionId, me.connectionId);
      const connected = seen.find((e) => e.event === "connected" && e.body.connectionId === me.connectionId);
      assert.ok(connected, "the upstream heard of the connection");
      assert.equal(connected.category, "connections");
      assert.equal(connected.body.userId, user);
      assert.equal(connected.headers["x-asrs-hub"], "game");
      const add = seen.find((e) => e.event === "Add" && e.body.connectionId === me.connectionId);
      assert.deepEqual(add.body.arguments, [2, 40]);
      assert.equal(add.body.target, "Add");
      await rejectsWith(
        assert,
        client.invoke("Refuse"),
        "An unexpected error occurred invoking 'Refuse' on the server. HubException: not in this room",
      );
    } finally {
      await client.stop();
    }
    await until(
      () => seen.some((e) => e.event === "disconnected" && e.body.userId === user),
      "the disconnected event",
    );
  }
  assert.ok(seen.length > 0);
  assert.deepEqual(
    seen.filter((e) => !e.signed).map((e) => e.event),
    [],
    "every upstream request carries a valid signature",
  );
});

test("the upstream reaches clients back through the REST API", async () => {
  const [a, b] = await Promise.all([
    connect(server, "/hubs/game", "json", { token: await clientToken("ann", "Player") }),
    connect(server, "/hubs/game", "json", { transport: "LongPolling", token: await clientToken("bob", "Player") }),
  ]);
  try {
    const heard = next(b, "Shouted");
    assert.equal(await a.invoke("Shout", "hello"), 202);
    assert.deepEqual(await heard, ["ann", "hello"]);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test("an upstream that is down or too slow fails the invocation at once; the connection stays usable", async () => {
  const offline = await connect(server, "/hubs/offline", "json", { token: await clientToken("cy", "Player") });
  const game = await connect(server, "/hubs/game", "json", { token: await clientToken("cy", "Player") });
  try {
    let started = Date.now();
    await rejectsWith(
      assert,
      offline.invoke("Anything", 1),
      "An unexpected error occurred invoking 'Anything' on the server. HubException: The upstream is unreachable.",
    );
    assert.ok(Date.now() - started < 3000);
    started = Date.now();
    await rejectsWith(
      assert,
      game.invoke("Slow"),
      "An unexpected error occurred invoking 'Slow' on the server. HubException: The upstream did not answer within 1s.",
    );
    assert.ok(Date.now() - started < 2900, "the 1s upstream timeout, not the upstream's 3s");
    assert.equal(await game.invoke("Add", 1, 1), 2);
  } finally {
    await Promise.all([offline.stop(), game.stop()]);
  }
});

test("transports per hub come from the file", async () => {
  const response = await fetch(`${server.url}/hubs/game/negotiate?negotiateVersion=1`, { method: "POST" });
  const negotiated = await response.json();
  assert.deepEqual(
    negotiated.availableTransports.map((t) => t.transport),
    ["WebSockets", "LongPolling"],
  );
  const chat = await (await fetch(`${server.url}/hubs/chat/negotiate?negotiateVersion=1`, { method: "POST" })).json();
  assert.equal(chat.availableTransports.length, 3);
});

test("check-config exits non-zero naming what is wrong; the server refuses to start with it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tidings-bad-config-"));
  const config = join(dir, "bad.toml");
  writeFileSync(config, `[hubs.game]\nupstream = "http://127.0.0.1:1/{evnt}"\n[limits]\nkeep_alive = "soon"\n`);
  const failed = await run(BIN, ["check-config", "--config", config], { env: { ...process.env, RUST_BACKTRACE: "0" } }).then(
    () => assert.fail("check-config accepted an invalid file"),
    (error) => error,
  );
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /limits\.keep_alive: 'soon' is not a duration/);
  writeFileSync(config, `[auth]\naccess_keys = ["${ACCESS_KEY}"]\n[hubs.game]\nupstream = "http://127.0.0.1:1/{evnt}"\n`);
  const semantic = await run(BIN, ["check-config", "--config", config], { env: { ...process.env, RUST_BACKTRACE: "0" } }).then(
    () => assert.fail("check-config accepted an invalid upstream"),
    (error) => error,
  );
  assert.equal(semantic.code, 1);
  assert.match(semantic.stderr, /hubs\.game\.upstream: unknown placeholder '\{evnt\}'/);
  await assert.rejects(startServer(["--config", config], { RUST_BACKTRACE: "0" }), /exited with 1.*unknown placeholder/s);
  // TIDINGS_<SECTION>__<KEY> variables override the file.
  const fixed = await run(BIN, ["check-config", "--config", config], {
    env: { ...process.env, TIDINGS_HUBS__GAME__UPSTREAM: "http://127.0.0.1:1/{event}" },
  });
  assert.match(fixed.stdout, /configuration OK: .*game \(serverless\)/);
});
