// The HTTP transports on the wire: the status codes and framing the
// official clients rely on, checked with plain fetch.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, next, sleep, rawJson, upgradeStatus } from "./helpers.mjs";

const RS = "\x1e";
let server;
before(async () => {
  server = await startServer(["--keep-alive-ms", "300"]);
});
after(async () => {
  await server.stop();
});

async function negotiate() {
  const res = await fetch(`${server.url}/hubs/test/negotiate?negotiateVersion=1`, { method: "POST" });
  return (await res.json()).connectionToken;
}

const hub = (token) => `${server.url}/hubs/test?id=${encodeURIComponent(token)}`;
const post = (token, body) => fetch(hub(token), { method: "POST", body });

test("long polling: first poll at once, data polls, supersession, DELETE, then 204", async () => {
  const token = await negotiate();
  const first = await fetch(hub(token));
  assert.equal(first.status, 200);
  assert.equal((await first.arrayBuffer()).byteLength, 0);

  const held = fetch(hub(token));
  assert.equal((await post(token, `{"protocol":"json","version":1}${RS}`)).status, 200);
  const handshake = await held;
  assert.equal(handshake.status, 200);
  assert.equal(await handshake.text(), `{}${RS}`);

  // Two invocations in one POST, answered in one poll.
  const poll = fetch(hub(token));
  const body =
    `{"type":1,"invocationId":"1","target":"Echo","arguments":["a"]}${RS}` +
    `{"type":1,"invocationId":"2","target":"Add","arguments":[1,2]}${RS}`;
  assert.equal((await post(token, body)).status, 200);
  let text = await (await poll).text();
  while (!text.includes('"invocationId":"2"')) text += await (await fetch(hub(token))).text();
  assert.equal(text, `{"type":3,"invocationId":"1","result":"a"}${RS}{"type":3,"invocationId":"2","result":3}${RS}`);

  // A second poll supersedes the first, which answers 204.
  const older = fetch(hub(token));
  await sleep(100);
  const newer = fetch(hub(token));
  assert.equal((await older).status, 204);

  // DELETE ends the connection: 202, and the pending poll gets the Close or 204.
  assert.equal((await fetch(hub(token), { method: "DELETE" })).status, 202);
  const last = await newer;
  assert.ok([200, 204].includes(last.status), `status ${last.status}`);
  // From then on polls answer 204.
  let after = await fetch(hub(token));
  if (after.status === 200) after = await fetch(hub(token));
  assert.equal(after.status, 204);
});

test("long polling: a client that stops polling is disconnected", async () => {
  const own = await startServer(["--disconnect-timeout-ms", "1000"]);
  try {
    const observer = await connect(own, "/hubs/test", "json");
    await observer.invoke("Observe");
    const res = await fetch(`${own.url}/hubs/test/negotiate?negotiateVersion=1`, { method: "POST" });
    const token = (await res.json()).connectionToken;
    const url = `${own.url}/hubs/test?id=${token}`;
    await fetch(url);
    const held = fetch(url);
    await fetch(url, { method: "POST", body: `{"protocol":"json","version":1}${RS}` });
    assert.equal(await (await held).text(), `{}${RS}`);
    // No more polls: after the disconnect timeout the connection ends.
    const [goneId] = await next(observer, "ClientDisconnected", 5000);
    assert.match(goneId, /^[A-Za-z0-9_-]{22}$/);
    await observer.stop();
  } finally {
    await own.stop();
  }
});

test("long polling carries MessagePack as binary", async () => {
  const token = await negotiate();
  await fetch(hub(token));
  const held = fetch(hub(token));
  await post(token, `{"protocol":"messagepack","version":1}${RS}`);
  assert.equal(await (await held).text(), `{}${RS}`);
  const poll = fetch(hub(token));
  // [1, {}, "1", "Add", [2, 3]]
  const msg = Buffer.from([0x95, 0x01, 0x80, 0xa1, 0x31, 0xa3, 0x41, 0x64, 0x64, 0x92, 0x02, 0x03]);
  await post(token, Buffer.concat([Buffer.from([msg.length]), msg]));
  const bytes = Buffer.from(await (await poll).arrayBuffer());
  assert.deepEqual([...bytes], [0x07, 0x95, 0x03, 0x80, 0xa1, 0x31, 0x03, 0x05]);
  await fetch(hub(token), { method: "DELETE" });
});

test("server-sent events: comment first, data lines, pings, and MessagePack refused", async () => {
  const token = await negotiate();
  const controller = new AbortController();
  const res = await fetch(hub(token), { headers: { Accept: "text/event-stream" }, signal: controller.signal });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  const reader = res.body.getReader();
  let text = "";
  const readUntil = async (needle) => {
    while (!text.includes(needle)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended; got ${JSON.stringify(text)}`);
      text += Buffer.from(value).toString("utf8");
    }
  };
  await readUntil(":\r\n");
  assert.ok(text.startsWith(":\r\n"));
  // A second SSE stream for the same connection is a conflict.
  assert.equal((await fetch(hub(token), { headers: { Accept: "text/event-stream" } })).status, 409);
  // Switching transport mid-connection is refused.
  assert.equal((await fetch(hub(token))).status, 400);

  await post(token, `{"protocol":"json","version":1}${RS}`);
  await readUntil(`data: {}${RS}\r\n\r\n`);
  await post(token, `{"type":1,"invocationId":"7","target":"Echo","arguments":["line1\\nline2"]}${RS}`);
  await readUntil(`data: {"type":3,"invocationId":"7","result":"line1\\nline2"}${RS}\r\n\r\n`);
  await readUntil(`data: {"type":6}${RS}\r\n\r\n`);
  controller.abort();

  const token2 = await negotiate();
  const controller2 = new AbortController();
  const res2 = await fetch(hub(token2), { headers: { Accept: "text/event-stream" }, signal: controller2.signal });
  const reader2 = res2.body.getReader();
  await post(token2, `{"protocol":"messagepack","version":1}${RS}`);
  let text2 = "";
  while (!text2.includes("error")) {
    const { value, done } = await reader2.read();
    if (done) break;
    text2 += Buffer.from(value).toString("utf8");
  }
  assert.match(text2, /data: \{"error":"Cannot use the 'messagepack' protocol on the current transport\. The transport does not support 'Binary' transfer format\."\}/);
  controller2.abort();
});

test("a token presented at the wrong door gets ASP.NET Core's answer, not 404", async () => {
  const ws = server.url.replace("http", "ws");
  const token = await negotiate();
  const socket = await rawJson(server, "/hubs/test", { query: `?id=${encodeURIComponent(token)}` });
  await socket.until((frames) => frames.length > 0);
  const answer = async (res) => ({ status: res.status, body: await res.text() });

  // A second socket for the connection is a conflict.
  assert.equal((await upgradeStatus(`${ws}/hubs/test?id=${encodeURIComponent(token)}`)).status, 409);
  // The HTTP transports' requests are refused for a WebSocket connection.
  assert.deepEqual(await answer(await post(token, "{}" + RS)), {
    status: 405,
    body: "POST requests are not allowed for WebSocket connections.",
  });
  assert.deepEqual(await answer(await fetch(hub(token), { method: "DELETE" })), {
    status: 400,
    body: "Cannot terminate this connection using the DELETE endpoint.",
  });
  assert.deepEqual(await answer(await fetch(hub(token))), {
    status: 400,
    body: "Cannot change transports mid-connection",
  });
  assert.deepEqual(await answer(await fetch(hub(token), { headers: { Accept: "text/event-stream" } })), {
    status: 400,
    body: "Cannot change transports mid-connection",
  });
  // The connection itself is unharmed.
  socket.send({ type: 1, invocationId: "1", target: "Echo", arguments: ["still here"] });
  await socket.until((frames) => frames.some((f) => f.json.invocationId === "1"));
  assert.equal(socket.frames.find((f) => f.json.invocationId === "1").json.result, "still here");

  // Once the socket is gone, so is the token.
  socket.close();
  let status = 405;
  for (let tries = 0; status === 405 && tries < 40; tries++) {
    await sleep(50);
    status = (await post(token, "{}" + RS)).status;
  }
  assert.equal(status, 404);

  // And the other way round: a Long Polling connection cannot switch to a WebSocket.
  const polled = await negotiate();
  assert.equal((await fetch(hub(polled))).status, 200);
  assert.deepEqual(await upgradeStatus(`${ws}/hubs/test?id=${encodeURIComponent(polled)}`), {
    status: 400,
    body: "Cannot change transports mid-connection",
  });
  assert.equal((await fetch(hub(polled), { method: "DELETE" })).status, 202);
});
