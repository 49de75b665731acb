// Transport behaviour that clients other than the official JavaScript one
// rely on: data posted before the first poll or event stream, hub paths
// matched as ASP.NET Core matches them (any case, optional trailing slash),
// the Close status of a WebSocket the client closes without one, and which
// user a Long Polling or SSE request without a token belongs to.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startServer, connect, token, JWT_SECRET } from "./helpers.mjs";

const RS = "\x1e";
const HANDSHAKE = `{"protocol":"json","version":1}${RS}`;
const TRANSPORTS = ["WebSockets", "ServerSentEvents", "LongPolling"];

/** Negotiates a connection (version 1) and returns its token. */
async function negotiate(server, path = "/hubs/test", headers = {}) {
  const res = await fetch(`${server.url}${path}/negotiate?negotiateVersion=1`, { method: "POST", headers });
  assert.equal(res.status, 200);
  return (await res.json()).connectionToken;
}

const hub = (server, id) => `${server.url}/hubs/test?id=${encodeURIComponent(id)}`;

/**
 * Reads an SSE response until its text contains `needle`; the stream (and
 * with it the connection) is closed unless `keepOpen`.
 */
async function readUntil(response, needle, { keepOpen = false, timeoutMs = 5000 } = {}) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const deadline = Date.now() + timeoutMs;
  while (!text.includes(needle)) {
    if (Date.now() > deadline) throw new Error(`no ${JSON.stringify(needle)} in ${JSON.stringify(text)}`);
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value);
  }
  if (!keepOpen) await reader.cancel();
  return text;
}

describe("without authentication", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test("Long Polling: a handshake posted before the first poll is answered by the polls", async () => {
    const id = await negotiate(server);
    const posted = await fetch(hub(server, id), { method: "POST", body: HANDSHAKE });
    assert.equal(posted.status, 200);
    const invoke = `{"type":1,"invocationId":"1","target":"Echo","arguments":["early"]}${RS}`;
    assert.equal((await fetch(hub(server, id), { method: "POST", body: invoke })).status, 200);
    const first = await fetch(hub(server, id));
    assert.equal(first.status, 200);
    assert.equal(await first.text(), "");
    let received = "";
    while (!received.includes('"invocationId":"1"')) {
      const poll = await fetch(hub(server, id));
      assert.equal(poll.status, 200);
      received += await poll.text();
    }
    const messages = received.split(RS).filter(Boolean).map((m) => JSON.parse(m));
    assert.deepEqual(messages[0], {}, "the handshake answer comes first");
    assert.ok(messages.some((m) => m.type === 3 && m.invocationId === "1" && m.result === "early"));
    assert.equal((await fetch(hub(server, id), { method: "DELETE" })).status, 202);
  });

  test("SSE: a handshake posted before the event stream opens is answered on the stream", async () => {
    const id = await negotiate(server);
    assert.equal((await fetch(hub(server, id), { method: "POST", body: HANDSHAKE })).status, 200);
    const stream = await fetch(hub(server, id), { headers: { Accept: "text/event-stream" } });
    assert.equal(stream.status, 200);
    assert.match(await readUntil(stream, `data: {}${RS}`), /data: \{\}\x1e/);
  });

  test("posts before the first poll keep the connection's limits and answers", async () => {
    const id = await negotiate(server);
    // DELETE is for Long Polling connections; one whose transport has not
    // started is not one yet.
    const deleted = await fetch(hub(server, id), { method: "DELETE" });
    assert.equal(deleted.status, 400);
    assert.equal(await deleted.text(), "Cannot terminate this connection using the DELETE endpoint.");
    // A body over the request limit is refused, as it is later.
    const huge = await fetch(hub(server, id), { method: "POST", body: "x".repeat((2 << 20) + 1) });
    assert.equal(huge.status, 413);
    // Unknown tokens stay unknown.
    const unknown = await fetch(hub(server, "nope"), { method: "POST", body: HANDSHAKE });
    assert.equal(unknown.status, 404);
    assert.equal(await unknown.text(), "No Connection with that ID");
  });

  for (const path of ["/HUBS/TEST", "/Hubs/Test/", "/hubs/test/"]) {
    for (const transport of TRANSPORTS) {
      test(`the hub at ${path} over ${transport}`, async () => {
        const c = await connect(server, path, "json", { transport });
        assert.equal(await c.invoke("Echo", path), path);
        assert.equal(await c.invoke("GetTransport"), transport);
        await c.stop();
      });
    }
  }

  test("negotiate and transport requests at mixed-case paths with trailing slashes", async () => {
    const res = await fetch(`${server.url}/HUBS/Test/NEGOTIATE/?negotiateVersion=1`, { method: "POST" });
    assert.equal(res.status, 200);
    const id = (await res.json()).connectionToken;
    const url = (p) => `${server.url}${p}?id=${encodeURIComponent(id)}`;
    assert.equal((await fetch(url("/Hubs/TEST/"), { method: "POST", body: HANDSHAKE })).status, 200);
    assert.equal((await fetch(url("/hubs/Test"))).status, 200);
    assert.equal(await (await fetch(url("/HUBS/TEST/"))).text(), `{}${RS}`);
    assert.equal((await fetch(url("/hubs/TEST/"), { method: "DELETE" })).status, 202);
    // Paths that are not a hub's stay unrouted.
    assert.equal((await fetch(`${server.url}/hubs/testing/negotiate`, { method: "POST" })).status, 404);
  });

  test("a raw ws client closing without a status gets 1000 and a clean close", async () => {
    const ws = new WebSocket(`${server.url.replace("http", "ws")}/hubs/test`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    const answer = new Promise((resolve) => {
      ws.onmessage = (event) => resolve(event.data.toString());
    });
    ws.send(HANDSHAKE);
    assert.equal(await answer, `{}${RS}`);
    const closed = new Promise((resolve) => {
      ws.onclose = (event) => resolve({ code: event.code, wasClean: event.wasClean });
    });
    ws.close();
    assert.deepEqual(await closed, { code: 1000, wasClean: true });
  });

  test("a raw ws client the server closes normally gets 1000", async () => {
    const ws = new WebSocket(`${server.url.replace("http", "ws")}/hubs/test`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    const closed = new Promise((resolve) => {
      ws.onclose = (event) => resolve({ code: event.code, wasClean: event.wasClean });
    });
    ws.send(HANDSHAKE);
    // A Close message from the client ends the connection from the server's side.
    ws.send(`{"type":7}${RS}`);
    assert.deepEqual(await closed, { code: 1000, wasClean: true });
  });
});

describe("which user an HTTP transport's requests are", () => {
  let server;
  before(async () => {
    server = await startServer(["--jwt-secret", JWT_SECRET]);
  });
  after(() => server.stop());

  for (const transport of ["LongPolling", "ServerSentEvents"]) {
    test(`${transport}: requests without a token are the negotiating user's`, async () => {
      const ann = token({ sub: "ann" });
      const id = await negotiate(server, "/hubs/test", { Authorization: `Bearer ${ann}` });
      const url = hub(server, id);
      // Only the negotiation carried the token.
      const invoke = `{"type":1,"invocationId":"1","target":"GetUserIdentifier","arguments":[]}${RS}`;
      assert.equal((await fetch(url, { method: "POST", body: HANDSHAKE + invoke })).status, 200);
      let received;
      if (transport === "LongPolling") {
        assert.equal((await fetch(url)).status, 200);
        received = "";
        while (!received.includes('"invocationId":"1"')) received += await (await fetch(url)).text();
      } else {
        const stream = await fetch(url, { headers: { Accept: "text/event-stream" } });
        received = await readUntil(stream, '"invocationId":"1"', { keepOpen: true });
      }
      assert.match(received, /"result":"ann"/);
      // Another user's valid token is refused.
      const bob = { Authorization: `Bearer ${token({ sub: "bob" })}` };
      const ping = `{"type":6}${RS}`;
      assert.equal((await fetch(url, { method: "POST", body: ping, headers: bob })).status, 403);
      assert.equal((await fetch(url, { method: "POST", body: ping, headers: { Authorization: `Bearer ${ann}` } })).status, 200);
      assert.equal((await fetch(url, { method: "POST", body: ping })).status, 200);
    });
  }

  test("a first request with another user's token is refused", async () => {
    const id = await negotiate(server, "/hubs/test", { Authorization: `Bearer ${token({ sub: "ann" })}` });
    const bob = { Authorization: `Bearer ${token({ sub: "bob" })}` };
    assert.equal((await fetch(hub(server, id), { method: "POST", body: HANDSHAKE, headers: bob })).status, 403);
    assert.equal((await fetch(hub(server, id), { headers: bob })).status, 403);
    assert.equal((await fetch(hub(server, id), { headers: { ...bob, Accept: "text/event-stream" } })).status, 403);
  });
});
