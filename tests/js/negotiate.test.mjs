// Negotiation and the transport endpoint, driven over plain HTTP/WebSocket
// and with the official client's skipNegotiation mode.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, upgradeStatus, PROTOCOLS } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.stop();
});

const negotiate = (query) => fetch(`${server.url}/hubs/test/negotiate${query}`, { method: "POST" });

test("negotiate version 1 returns a public id and a separate secret token", async () => {
  const res = await negotiate("?negotiateVersion=1");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/json");
  const body = await res.json();
  assert.equal(body.negotiateVersion, 1);
  assert.match(body.connectionId, /^[A-Za-z0-9_-]{22}$/);
  assert.match(body.connectionToken, /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(body.connectionId, body.connectionToken);
  assert.deepEqual(body.availableTransports, [{ transport: "WebSockets", transferFormats: ["Text", "Binary"] }]);
  assert.equal("useStatefulReconnect" in body, false);
});

test("negotiate without a version answers version 0 with no token", async () => {
  const body = await (await negotiate("")).json();
  assert.equal(body.negotiateVersion, 0);
  assert.equal(body.connectionToken, undefined);
  assert.match(body.connectionId, /^[A-Za-z0-9_-]{22}$/);
});

test("negotiate clamps a newer version to 1 and reports bad versions as JSON errors", async () => {
  assert.equal((await (await negotiate("?negotiateVersion=7")).json()).negotiateVersion, 1);
  assert.deepEqual(await (await negotiate("?NegotiateVersion=abc")).json(), {
    error: "The client requested an invalid protocol version 'abc'",
  });
  assert.deepEqual(await (await negotiate("?negotiateVersion=-1")).json(), {
    error: "The client requested version '-1', but the server does not support this version.",
  });
});

test("negotiate accepts only POST", async () => {
  const res = await fetch(`${server.url}/hubs/test/negotiate?negotiateVersion=1`);
  assert.equal(res.status, 405);
});

test("the transport is opened with the token; an unknown or used token gets 404", async () => {
  const ws = server.url.replace("http", "ws");
  const unknown = await upgradeStatus(`${ws}/hubs/test?id=nope`);
  assert.deepEqual(unknown, { status: 404, body: "No Connection with that ID" });

  const body = await (await negotiate("?negotiateVersion=1")).json();
  // The public id is not a credential.
  assert.equal((await upgradeStatus(`${ws}/hubs/test?id=${body.connectionId}`)).status, 404);
  assert.equal(await upgradeStatus(`${ws}/hubs/test?id=${body.connectionToken}`), 101);
  assert.equal((await upgradeStatus(`${ws}/hubs/test?id=${body.connectionToken}`)).status, 404);
});

test("a version 0 connection uses its id as the token", async () => {
  const ws = server.url.replace("http", "ws");
  const body = await (await negotiate("")).json();
  assert.equal(await upgradeStatus(`${ws}/hubs/test?id=${body.connectionId}`), 101);
});

test("transports that are not available yet are refused with 404", async () => {
  const sse = await fetch(`${server.url}/hubs/test?id=x`, { headers: { Accept: "text/event-stream" } });
  assert.equal(sse.status, 404);
  assert.equal(await sse.text(), "ServerSentEvents transport not supported by this end point type");
  const poll = await fetch(`${server.url}/hubs/test?id=x`);
  assert.equal(poll.status, 404);
});

for (const protocol of PROTOCOLS) {
  test(`[${protocol}] the connection id the client sees is the server's`, async () => {
    const connection = await connect(server, "/hubs/test", protocol);
    assert.match(connection.connectionId, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(await connection.invoke("GetConnectionId"), connection.connectionId);
    await connection.stop();
  });

  test(`[${protocol}] skipNegotiation opens a WebSocket directly`, async () => {
    const connection = await connect(server, "/hubs/test", protocol, { skipNegotiation: true });
    assert.equal(connection.connectionId, null);
    const id = await connection.invoke("GetConnectionId");
    assert.match(id, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(await connection.invoke("Echo", "direct"), "direct");
    await connection.stop();
  });
}
