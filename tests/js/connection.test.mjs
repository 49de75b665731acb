// Connection-level behaviour: handshake, frames, keep-alive, timeouts,
// message size limit, and graceful shutdown.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startServer, connect, closed, next, rawJson, sleep, COMBOS } from "./helpers.mjs";

let server; // short timers, detailed errors
let plain; // defaults
before(async () => {
  server = await startServer([
    "--detailed-errors",
    "--keep-alive-ms",
    "200",
    "--client-timeout-ms",
    "600",
    "--handshake-timeout-ms",
    "300",
  ]);
  plain = await startServer();
});
after(async () => {
  await server.stop();
  await plain.stop();
});

test("handshake errors: unknown protocol, unsupported version, malformed, timeout", async () => {
  const unknown = await rawJson(plain, "/hubs/test", { handshake: { protocol: "foo", version: 1 } });
  await unknown.until((f, c) => f.length >= 1 && c);
  assert.deepEqual(unknown.frames[0].json, { error: "The protocol 'foo' is not supported." });

  const version = await rawJson(plain, "/hubs/test", { handshake: { protocol: "json", version: 3 } });
  await version.until((f, c) => f.length >= 1 && c);
  assert.deepEqual(version.frames[0].json, { error: "The server does not support version 3 of the 'json' protocol." });

  const malformed = await rawJson(plain, "/hubs/test", { handshake: null });
  malformed.sendRaw('{"protocol":\x1e');
  await malformed.until((f, c) => f.length >= 1 && c);
  assert.deepEqual(malformed.frames[0].json, { error: "An unexpected error occurred during connection handshake." });

  const silent = await rawJson(server, "/hubs/test", { handshake: null });
  await silent.until((f, c) => f.length >= 1 && c, 3000);
  assert.deepEqual(silent.frames[0].json, { error: "Handshake was canceled." });
});

test("handshake protocol names are case-insensitive and versions 0-2 are accepted", async () => {
  for (const handshake of [
    { protocol: "JSON", version: 1 },
    { protocol: "json", version: 0 },
    { protocol: "json", version: 2 },
  ]) {
    const raw = await rawJson(plain, "/hubs/test", { handshake });
    raw.send({ type: 1, invocationId: "1", target: "Echo", arguments: [1] });
    await raw.until((f) => f.some((x) => x.json.type === 3));
    assert.deepEqual(raw.frames[0].json, {});
    assert.equal(raw.frames[0].binary, false);
    raw.close();
  }
});

test("handshake and messages may share a frame; several messages per frame; split messages", async () => {
  const raw = await rawJson(plain, "/hubs/test", { handshake: null });
  raw.sendRaw(
    '{"protocol":"json","version":1}\x1e' +
      '{"type":1,"invocationId":"a","target":"Echo","arguments":[1]}\x1e{"type":1,"invocationId":"b","target":"Echo","arguments":[2]}\x1e{"type":1,"invoc',
  );
  raw.sendRaw('ationId":"c","target":"Echo","arguments":[3]}\x1e');
  await raw.until((f) => f.filter((x) => x.json.type === 3).length === 3);
  const completions = raw.frames.filter((x) => x.json.type === 3).map((x) => x.json);
  assert.deepEqual(completions, [
    { type: 3, invocationId: "a", result: 1 },
    { type: 3, invocationId: "b", result: 2 },
    { type: 3, invocationId: "c", result: 3 },
  ]);
  raw.close();
});

test("a non-blocking invocation never gets a completion, even for errors", async () => {
  const raw = await rawJson(plain, "/hubs/test");
  raw.send({ type: 1, target: "Missing", arguments: [] });
  raw.send({ type: 1, target: "Throw", arguments: ["x"] });
  raw.send({ type: 1, target: "Add", arguments: [1] });
  raw.send({ type: 1, invocationId: "last", target: "Echo", arguments: ["done"] });
  await raw.until((f) => f.some((x) => x.json.type === 3));
  await sleep(100);
  const completions = raw.frames.filter((x) => x.json.type === 3).map((x) => x.json);
  assert.deepEqual(completions, [{ type: 3, invocationId: "last", result: "done" }]);
  raw.close();
});

test("MessagePack connections get binary frames, the handshake answer included", async () => {
  const ws = new WebSocket(`${plain.url.replace("http", "ws")}/hubs/test`);
  const frames = [];
  ws.on("message", (data, isBinary) => frames.push({ data: Buffer.from(data), isBinary }));
  await new Promise((r) => ws.once("open", r));
  ws.send(Buffer.from('{"protocol":"messagepack","version":1}\x1e'));
  // [1, {}, "1", "Add", [2, 3]] with a VarInt length prefix.
  const body = Buffer.from([0x95, 0x01, 0x80, 0xa1, 0x31, 0xa3, 0x41, 0x64, 0x64, 0x92, 0x02, 0x03]);
  ws.send(Buffer.concat([Buffer.from([body.length]), body]));
  const deadline = Date.now() + 3000;
  while (frames.length < 2 && Date.now() < deadline) await sleep(20);
  assert.ok(frames.length >= 2, `frames: ${frames.length}`);
  assert.equal(frames[0].isBinary, true);
  assert.deepEqual([...frames[0].data], [0x7b, 0x7d, 0x1e]); // {}␞
  assert.equal(frames[1].isBinary, true);
  // [3, {}, "1", 3, 5]
  assert.deepEqual([...frames[1].data], [0x07, 0x95, 0x03, 0x80, 0xa1, 0x31, 0x03, 0x05]);
  ws.terminate();
});

for (const [transport, protocol] of COMBOS) {
  test(`[${transport}/${protocol}] server pings keep a client with a short server timeout alive`, async () => {
    // The client pings too (every 200 ms), or the 600 ms client timeout would end it.
    // (Long Polling has no pings: its polls keep both sides alive.)
    const c = await connect(server, "/hubs/test", protocol, { transport, serverTimeout: 1000, keepAlive: 200 });
    let closedError = "open";
    c.onclose((e) => (closedError = e));
    await sleep(2500);
    assert.equal(closedError, "open");
    assert.equal(await c.invoke("Echo", "alive"), "alive");
    await c.stop();
  });

  // Long Polling clients never ping, so the client timeout is never armed
  // for them (as in ASP.NET Core); an idle poller is reaped instead.
  test(`[${transport}/${protocol}] a client that stops pinging is closed after the client timeout`, { skip: transport === "LongPolling" }, async () => {
    const c = await connect(server, "/hubs/test", protocol, { transport, keepAlive: 60000, serverTimeout: 60000 });
    const error = await closed(c, 5000);
    assert.equal(
      error?.message,
      "Server returned an error on close: Connection closed with an error. OperationCanceledException: Client hasn't sent a message/ping within the configured ClientTimeoutInterval.",
    );
  });

  test(`[${transport}/${protocol}] a message over the size limit closes the connection with an error`, async () => {
    const c = await connect(server, "/hubs/test", protocol, { transport });
    const whenClosed = closed(c);
    c.invoke("Echo", "x".repeat(40 * 1024)).catch(() => {});
    const error = await whenClosed;
    assert.equal(
      error?.message,
      "Server returned an error on close: Connection closed with an error. InvalidDataException: The maximum message size of 32768B was exceeded. The message size can be configured in AddHubOptions.",
    );

    const p = await connect(plain, "/hubs/test", protocol, { transport });
    const plainClosed = closed(p);
    p.invoke("Echo", "x".repeat(40 * 1024)).catch(() => {});
    assert.equal((await plainClosed)?.message, "Server returned an error on close: Connection closed with an error.");
  });

  test(`[${transport}/${protocol}] a bad message on one connection does not disturb another`, async () => {
    const victim = await connect(plain, "/hubs/test", protocol, { transport });
    const raw = await rawJson(plain, "/hubs/test");
    raw.sendRaw('{"type":1,"target":\x1e');
    await raw.until((f, c) => c !== null);
    const close = raw.frames.find((x) => x.json.type === 7);
    assert.deepEqual(close.json, { type: 7, error: "Connection closed with an error.", allowReconnect: true });
    assert.equal(await victim.invoke("Echo", "unaffected"), "unaffected");
    await victim.stop();
  });
}

test("graceful shutdown: Close with allowReconnect, then the process exits", async () => {
  const own = await startServer();
  const clients = await Promise.all(
    COMBOS.map(([transport, p]) => connect(own, "/hubs/test", p, { transport, reconnect: [60000] })),
  );
  const reconnecting = clients.map((c) => new Promise((resolve) => c.onreconnecting((e) => resolve(e ?? null))));
  own.child.kill("SIGTERM");
  // allowReconnect: true makes the official client start reconnecting.
  assert.deepEqual(await Promise.all(reconnecting), COMBOS.map(() => null));
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), 15000)));
  const exit = await Promise.race([own.exited, timeout]);
  clearTimeout(timer);
  assert.deepEqual(exit, { code: 0, signal: null });
  await Promise.all(clients.map((c) => c.stop()));
});

test("graceful shutdown drains: /readyz 503 and new connections refused until the last client has its Close", async () => {
  const own = await startServer();
  const RS = "\x1e";
  const negotiate = () => fetch(`${own.url}/hubs/test/negotiate?negotiateVersion=1`, { method: "POST" });
  // A Long Polling connection that is not polling when the shutdown starts:
  // its Close waits for its next poll, and the server for it.
  const { connectionToken } = await (await negotiate()).json();
  const hub = `${own.url}/hubs/test?id=${encodeURIComponent(connectionToken)}`;
  assert.equal((await fetch(hub)).status, 200);
  const answer = fetch(hub);
  await fetch(hub, { method: "POST", body: `{"protocol":"json","version":1}${RS}` });
  assert.equal(await (await answer).text(), `{}${RS}`);
  assert.equal((await fetch(`${own.url}/readyz`)).status, 200);

  own.child.kill("SIGTERM");
  let ready = await fetch(`${own.url}/readyz`);
  for (let tries = 0; ready.status === 200 && tries < 40; tries++) {
    await sleep(50);
    ready = await fetch(`${own.url}/readyz`);
  }
  assert.equal(ready.status, 503);
  assert.deepEqual(await ready.json(), { status: "unavailable", accepting: false, backplane: null });
  assert.equal((await negotiate()).status, 503);
  // Still draining: the process waits for that connection.
  const early = await Promise.race([own.exited, sleep(300).then(() => "running")]);
  assert.equal(early, "running");

  const close = await fetch(hub);
  assert.equal(close.status, 200);
  assert.equal(await close.text(), `{"type":7,"allowReconnect":true}${RS}`);
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), 15000)));
  const exit = await Promise.race([own.exited, timeout]);
  clearTimeout(timer);
  assert.deepEqual(exit, { code: 0, signal: null });
});

test("several listen addresses serve one set of hubs, and shut down together", async () => {
  const own = await startServer(["--listen", "127.0.0.1:0,127.0.0.2:0"]);
  const urls = () => [...own.stdout().matchAll(/listening on (http:\/\/[\d.:]+)/g)].map((m) => m[1]);
  for (let tries = 0; urls().length < 2 && tries < 40; tries++) await sleep(50);
  const [first, second] = urls();
  assert.match(second ?? "", /^http:\/\/127\.0\.0\.2:\d+$/);
  const a = await connect({ url: first }, "/hubs/test", "json", { reconnect: [60000] });
  const b = await connect({ url: second }, "/hubs/test", "json", { reconnect: [60000] });
  // One hub behind both: a broadcast through one address reaches the other.
  const heard = next(b, "Broadcast");
  await a.invoke("Broadcast", "both doors");
  assert.deepEqual(await heard, ["both doors"]);
  const reconnecting = [a, b].map((c) => new Promise((resolve) => c.onreconnecting(() => resolve(true))));
  own.child.kill("SIGTERM");
  await Promise.all(reconnecting);
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), 15000)));
  const exit = await Promise.race([own.exited, timeout]);
  clearTimeout(timer);
  assert.deepEqual(exit, { code: 0, signal: null });
  await Promise.all([a.stop(), b.stop()]);
});
