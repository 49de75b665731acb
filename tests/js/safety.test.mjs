// Transport-level safety and abuse limits of the standalone server: the
// per-connection rate limit (a hub filter), global and per-IP connection
// limits answered before negotiation and upgrade, CORS and the WebSocket
// Origin allow-list, the secrecy and single use of connection tokens, and
// the size limit of SSE / Long Polling POST bodies.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startServer, connect, upgradeStatus, rejectsWith, sleep } from "./helpers.mjs";

const RS = "\x1e";

/** A plain HTTP request from a chosen local address (127.0.0.x). */
function request(url, { method = "GET", headers = {}, body, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress }, (res) => {
      let text = "";
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** Retries `attempt` until it resolves: places free up once the server has
 * seen a connection end, a moment after the client's stop() resolved. */
async function eventually(attempt) {
  for (let i = 0; ; i++) {
    try {
      return await attempt();
    } catch (error) {
      if (i >= 40) throw error;
      await sleep(100);
    }
  }
}

const negotiate = (server, path = "/hubs/test", options = {}) =>
  request(`${server.url}${path}/negotiate?negotiateVersion=1`, { method: "POST", ...options });

describe("per-connection rate limit", () => {
  let server;
  before(async () => {
    server = await startServer(["--rate-limit-burst", "3", "--rate-limit-per-second", "2"]);
  });
  after(() => server.stop());

  test("a connection over its budget is refused per call and stays open; others are not affected", async () => {
    const greedy = await connect(server, "/hubs/test", "json");
    const calm = await connect(server, "/hubs/test", "json");
    const limited = (method) =>
      `An unexpected error occurred invoking '${method}' on the server. HubException: Rate limit exceeded.`;
    // Unknown names cost a token too: the filter runs before the lookup.
    await assert.rejects(greedy.invoke("NoSuchMethod"), /Method does not exist/);
    assert.equal(await greedy.invoke("Add", 1, 2), 3);
    assert.equal(await greedy.invoke("Add", 2, 2), 4);
    await rejectsWith(assert, greedy.invoke("Add", 3, 3), limited("Add"));
    await rejectsWith(assert, greedy.invoke("NoSuchMethod"), limited("NoSuchMethod"));
    // The other connection has its own bucket.
    for (let i = 0; i < 3; i++) assert.equal(await calm.invoke("Add", i, 1), i + 1);
    // Tokens come back with time (2 per second).
    await sleep(600);
    assert.equal(await greedy.invoke("Add", 4, 4), 8);
    assert.equal(greedy.state, "Connected");
    await Promise.all([greedy.stop(), calm.stop()]);
  });
});

describe("connection limits", () => {
  let global;
  let perIp;
  before(async () => {
    [global, perIp] = await Promise.all([
      startServer(["--max-connections", "2"]),
      startServer([], { TIDINGS_MAX_CONNECTIONS_PER_IP: "1" }),
    ]);
  });
  after(() => Promise.all([global.stop(), perIp.stop()]));

  for (const transport of ["WebSockets", "ServerSentEvents", "LongPolling"]) {
    test(`the global limit answers 503 at negotiate and before the transport (${transport})`, async () => {
      // The previous case's connections may still be ending.
      const a = await eventually(() => connect(global, "/hubs/test", "json", { transport }));
      const b = await eventually(() => connect(global, "/hubs/chat", "json", { transport }));
      const refused = await negotiate(global);
      assert.equal(refused.status, 503);
      assert.equal(refused.body, "The server has reached its connection limit.");
      await assert.rejects(connect(global, "/hubs/test", "json", { transport }), /503/);
      const ws = `${global.url.replace("http", "ws")}/hubs/test`;
      assert.equal((await upgradeStatus(ws)).status, 503, "skipping negotiation does not help");
      // A negotiation holds its place until its transport ends.
      await a.stop();
      const early = await eventually(async () => {
        const res = await negotiate(global);
        assert.equal(res.status, 200);
        return JSON.parse(res.body);
      });
      assert.equal((await negotiate(global)).status, 503);
      const url = `${global.url}/hubs/test?id=${early.connectionToken}`;
      if (transport === "WebSockets") {
        assert.equal(await upgradeStatus(url.replace("http", "ws")), 101);
      } else {
        const accept = transport === "ServerSentEvents" ? { Accept: "text/event-stream" } : {};
        const controller = new AbortController();
        assert.equal((await fetch(url, { headers: accept, signal: controller.signal })).status, 200);
        if (transport === "LongPolling") await request(url, { method: "DELETE" });
        controller.abort();
      }
      // Once that connection has ended, and once another leaves, places free up.
      await b.stop();
      const c = await eventually(() => connect(global, "/hubs/test", "json", { transport }));
      const d = await eventually(() => connect(global, "/hubs/test", "json", { transport }));
      await Promise.all([c.stop(), d.stop()]);
    });
  }

  test("the per-IP limit answers 429, and counts each address on its own", async () => {
    const first = await connect(perIp, "/hubs/test", "json");
    const again = await negotiate(perIp, "/hubs/test", { localAddress: "127.0.0.1" });
    assert.equal(again.status, 429);
    assert.equal(again.body, "Too many connections from this address.");
    assert.equal((await upgradeStatus(`${perIp.url.replace("http", "ws")}/hubs/test`)).status, 429);
    // A negotiation holds the address's place too.
    const elsewhere = await negotiate(perIp, "/hubs/test", { localAddress: "127.0.0.2" });
    assert.equal(elsewhere.status, 200);
    assert.equal((await negotiate(perIp, "/hubs/test", { localAddress: "127.0.0.2" })).status, 429);
    await first.stop();
    await eventually(async () =>
      assert.equal((await negotiate(perIp, "/hubs/test", { localAddress: "127.0.0.1" })).status, 200),
    );
  });
});

describe("per-IP limit behind a reverse proxy", () => {
  let server;
  before(async () => {
    // 127.0.0.2 plays the proxy.
    server = await startServer(["--max-connections-per-ip", "1", "--trusted-proxies", "127.0.0.2,10.0.0.0/8"]);
  });
  after(() => server.stop());

  const from = (localAddress, forwardedFor) =>
    negotiate(server, "/hubs/test", { localAddress, headers: { "X-Forwarded-For": forwardedFor } });

  test("a trusted proxy's X-Forwarded-For names the client; anyone else's is ignored", async () => {
    // Through the proxy, each client has its own place.
    assert.equal((await from("127.0.0.2", "203.0.113.5")).status, 200);
    assert.equal((await from("127.0.0.2", "203.0.113.5")).status, 429);
    assert.equal((await from("127.0.0.2", "203.0.113.6")).status, 200);
    // A chain through two trusted proxies names the client before them;
    // an address written before an untrusted hop is not believed.
    assert.equal((await from("127.0.0.2", "203.0.113.6, 10.1.1.1")).status, 429);
    assert.equal((await from("127.0.0.2", "203.0.113.7, 198.51.100.1")).status, 200);
    assert.equal((await from("127.0.0.2", "203.0.113.8, 198.51.100.1")).status, 429);
    // A direct client cannot pick its address by writing the header.
    assert.equal((await from("127.0.0.3", "203.0.113.9")).status, 200);
    assert.equal((await from("127.0.0.3", "203.0.113.10")).status, 429);
  });

  test("a trusted proxy's RFC 7239 Forwarded header names the client, and wins over X-Forwarded-For", async () => {
    const forwarded = (localAddress, headers) => negotiate(server, "/hubs/test", { localAddress, headers });
    assert.equal((await forwarded("127.0.0.2", { Forwarded: "for=203.0.113.20;proto=http" })).status, 200);
    assert.equal((await forwarded("127.0.0.2", { Forwarded: 'for="203.0.113.20:4711"' })).status, 429);
    assert.equal((await forwarded("127.0.0.2", { Forwarded: 'for="[2001:db8::20]"' })).status, 200);
    assert.equal((await forwarded("127.0.0.2", { Forwarded: 'for="[2001:db8::20]:80"' })).status, 429);
    // Both headers: the standard one is read, X-Forwarded-For is not.
    const both = { Forwarded: "for=203.0.113.21", "X-Forwarded-For": "203.0.113.20" };
    assert.equal((await forwarded("127.0.0.2", both)).status, 200);
    // From an untrusted peer the header is ignored: 127.0.0.4 is itself.
    assert.equal((await forwarded("127.0.0.4", { Forwarded: "for=203.0.113.22" })).status, 200);
    assert.equal((await forwarded("127.0.0.4", { Forwarded: "for=203.0.113.23" })).status, 429);
  });
});

describe("allowed origins", () => {
  let open;
  let strict;
  const APP = "http://app.example";
  before(async () => {
    [open, strict] = await Promise.all([
      startServer(["--allowed-origins", `${APP},http://other.example`]),
      startServer([]),
    ]);
  });
  after(() => Promise.all([open.stop(), strict.stop()]));

  test("CORS preflight and answers name the allowed origin, with credentials", async () => {
    const preflight = await request(`${open.url}/hubs/chat/negotiate?negotiateVersion=1`, {
      method: "OPTIONS",
      headers: {
        Origin: APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,x-requested-with,x-signalr-user-agent",
      },
    });
    assert.equal(preflight.status, 200);
    assert.equal(preflight.headers["access-control-allow-origin"], APP);
    assert.equal(preflight.headers["access-control-allow-credentials"], "true");
    assert.match(preflight.headers["access-control-allow-methods"], /POST/);
    assert.match(preflight.headers["access-control-allow-headers"], /authorization/);

    const answer = await negotiate(open, "/hubs/chat", { headers: { Origin: APP } });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers["access-control-allow-origin"], APP);

    // Another origin gets no CORS grant (the browser then hides the answer).
    const evil = await negotiate(open, "/hubs/chat", { headers: { Origin: "http://evil.example" } });
    assert.equal(evil.headers["access-control-allow-origin"], undefined);
    // Without configured origins there is no CORS at all.
    const none = await negotiate(strict, "/hubs/chat", { headers: { Origin: APP } });
    assert.equal(none.headers["access-control-allow-origin"], undefined);
  });

  test("WebSocket upgrades from other sites are refused with 403", async () => {
    const status = (server, origin) =>
      new Promise((resolve) => {
        const url = `${server.url.replace("http", "ws")}/hubs/chat`;
        const req = http.request(url.replace("ws", "http"), {
          headers: {
            Connection: "Upgrade",
            Upgrade: "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            ...(origin ? { Origin: origin } : {}),
          },
        });
        req.on("upgrade", (res, socket) => {
          socket.destroy();
          resolve(res.statusCode);
        });
        req.on("response", (res) => {
          res.resume();
          resolve(res.statusCode);
        });
        req.end();
      });
    assert.equal(await status(open, APP), 101);
    assert.equal(await status(open, "http://OTHER.example"), 101);
    assert.equal(await status(open, "http://evil.example"), 403);
    assert.equal(await status(open, "null"), 403);
    // Same origin, and clients outside browsers (no Origin), always pass.
    assert.equal(await status(open, open.url), 101);
    assert.equal(await status(open, undefined), 101);
    assert.equal(await status(strict, strict.url), 101);
    assert.equal(await status(strict, APP), 403);
  });
});

describe("connection tokens and request bodies", () => {
  let server;
  before(async () => {
    server = await startServer(["--max-request-body", "1024"]);
  });
  after(() => server.stop());

  test("the public connection id cannot attach; the secret token attaches once", async () => {
    const { connectionId, connectionToken } = JSON.parse((await negotiate(server)).body);
    const ws = `${server.url.replace("http", "ws")}/hubs/test`;
    for (const attempt of [
      () => upgradeStatus(`${ws}?id=${connectionId}`),
      () => request(`${server.url}/hubs/test?id=${connectionId}`, { headers: { Accept: "text/event-stream" } }),
      () => request(`${server.url}/hubs/test?id=${connectionId}`),
      () => request(`${server.url}/hubs/test?id=${connectionId}`, { method: "POST", body: "{}" + RS }),
    ]) {
      assert.equal((await attempt()).status, 404);
    }
    // The token starts a Long Polling connection once; a WebSocket with
    // the same token is then refused, as a change of transport.
    assert.equal((await request(`${server.url}/hubs/test?id=${connectionToken}`)).status, 200);
    assert.deepEqual(await upgradeStatus(`${ws}?id=${connectionToken}`), {
      status: 400,
      body: "Cannot change transports mid-connection",
    });
    await request(`${server.url}/hubs/test?id=${connectionToken}`, { method: "DELETE" });
  });

  for (const transport of ["ServerSentEvents", "LongPolling"]) {
    test(`a POST body over the limit is refused with 413 (${transport})`, async () => {
      const { connectionToken } = JSON.parse((await negotiate(server)).body);
      const url = `${server.url}/hubs/test?id=${connectionToken}`;
      const controller = new AbortController();
      if (transport === "ServerSentEvents") {
        const sse = await fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal });
        assert.equal(sse.status, 200);
      } else {
        assert.equal((await request(url)).status, 200);
      }
      const big = await request(url, { method: "POST", body: "x".repeat(2048) });
      assert.equal(big.status, 413);
      const handshake = await request(url, { method: "POST", body: `{"protocol":"json","version":1}${RS}` });
      assert.equal(handshake.status, 200);
      controller.abort();
      if (transport === "LongPolling") await request(url, { method: "DELETE" });
    });
  }

  test("the official client works within the body limit", async () => {
    const c = await connect(server, "/hubs/test", "json", { transport: "LongPolling" });
    assert.equal(await c.invoke("Echo", "y".repeat(500)), "y".repeat(500));
    await c.stop();
  });
});
