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
  assert.deepEqual(body.availableTransports, [
    { transport: "WebSockets", transferFormats: ["Text", "Binary"] },
    { transport: "ServerSentEvents", transferFormats: ["Text"] },
    { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
  ]);
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
  // Once the server has seen that socket go (409 while it has not), the
  // token is used up.
  let again = await upgradeStatus(`${ws}/hubs/test?id=${body.connectionToken}`);
  for (let tries = 0; again.status === 409 && tries < 40; tries++) {
    await new Promise((r) => setTimeout(r, 50));
    again = await upgradeStatus(`${ws}/hubs/test?id=${body.connectionToken}`);
  }
  assert.deepEqual(again, { status: 404, body: "No Connection with that ID" });
});

test("a version 0 connection uses its id as the token", async () => {
  const ws = server.url.replace("http", "ws");
  const body = await (await negotiate("")).json();
  assert.equal(await upgradeStatus(`${ws}/hubs/test?id=${body.connectionId}`), 101);
});

test("SSE and Long Polling need a negotiated id", async () => {
  const sse = await fetch(`${server.url}/hubs/test?id=x`, { headers: { Accept: "text/event-stream" } });
  assert.equal(sse.status, 404);
  assert.equal(await sse.text(), "No Connection with that ID");
  const poll = await fetch(`${server.url}/hubs/test?id=x`);
  assert.equal(poll.status, 404);
  const missing = await fetch(`${server.url}/hubs/test`);
  assert.equal(missing.status, 400);
  assert.equal(await missing.text(), "Connection ID required");
  const post = await fetch(`${server.url}/hubs/test?id=x`, { method: "POST", body: "{}" });
  assert.equal(post.status, 404);
});

test("negotiate lists only the enabled transports, and the client falls back", async () => {
  const limited = await startServer(["--transports", "ServerSentEvents,LongPolling"]);
  try {
    const body = await (await fetch(`${limited.url}/hubs/test/negotiate?negotiateVersion=1`, { method: "POST" })).json();
    assert.deepEqual(
      body.availableTransports.map((t) => t.transport),
      ["ServerSentEvents", "LongPolling"],
    );
    const ws = await upgradeStatus(`${limited.url.replace("http", "ws")}/hubs/test`);
    assert.deepEqual(ws, { status: 404, body: "WebSockets transport not supported by this end point type" });
    // The official client, allowed every transport, ends up on SSE (JSON) or
    // Long Polling (MessagePack, which SSE cannot carry).
    const json = await connect(limited, "/hubs/test", "json", { transport: "All" });
    assert.equal(await json.invoke("GetTransport"), "ServerSentEvents");
    const mp = await connect(limited, "/hubs/test", "messagepack", { transport: "All" });
    assert.equal(await mp.invoke("GetTransport"), "LongPolling");
    await Promise.all([json.stop(), mp.stop()]);
  } finally {
    await limited.stop();
  }
  const pollOnly = await startServer(["--transports", "LongPolling"]);
  try {
    const json = await connect(pollOnly, "/hubs/test", "json", { transport: "All" });
    assert.equal(await json.invoke("GetTransport"), "LongPolling");
    await json.stop();
  } finally {
    await pollOnly.stop();
  }
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
