// Stateful reconnect: the official client's withStatefulReconnect() through a
// TCP proxy whose connections the tests cut, and the raw protocol (Ack,
// Sequence, replay, de-duplication, buffer limit, reconnect window).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  tcpProxy,
  connect,
  closed,
  record,
  rawJson,
  upgradeStatus,
  sleep,
  token,
  JWT_SECRET,
  PROTOCOLS,
} from "./helpers.mjs";

let server; // stateful reconnect allowed (the standalone server's default), JWT users
let short; // 2 s reconnect window
let tight; // 2000-byte replay buffer, 1.5 s client timeout, 300 ms pings
let off; // stateful reconnect refused
before(async () => {
  [server, short, tight, off] = await Promise.all([
    startServer(["--jwt-secret", JWT_SECRET]),
    startServer(["--disconnect-timeout-ms", "2000"]),
    startServer(["--stateful-reconnect-buffer", "2000", "--client-timeout-ms", "1500", "--keep-alive-ms", "300"]),
    startServer(["--allow-stateful-reconnects", "false"]),
  ]);
});
after(async () => {
  await Promise.all([server, short, tight, off].map((s) => s?.stop()));
});

const range = (n) => Array.from({ length: n }, (_, i) => i);

async function until(condition, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function negotiate(target, query) {
  const res = await fetch(`${target.url}/hubs/test/negotiate${query}`, { method: "POST" });
  assert.equal(res.status, 200);
  return res.json();
}

/** Negotiates stateful reconnect and opens its first socket (handshake version 2). */
async function statefulRaw(target, version = 2) {
  const body = await negotiate(target, "?negotiateVersion=1&useStatefulReconnect=true");
  assert.equal(body.useStatefulReconnect, true);
  const query = `?id=${body.connectionToken}`;
  const raw = await rawJson(target, "/hubs/test", { handshake: { protocol: "json", version }, query });
  await raw.until((f) => f.length >= 1);
  assert.deepEqual(raw.frames[0].json, {});
  return { raw, query, id: body.connectionId };
}

/** Waits until a WebSocket upgrade for `query` is refused with 404. */
async function gone(target, query) {
  const url = `${target.url.replace("http", "ws")}/hubs/test${query}`;
  const deadline = Date.now() + 5000;
  for (;;) {
    const status = await upgradeStatus(url);
    if (status.status === 404) return status;
    if (Date.now() > deadline) throw new Error(`still accepted: ${JSON.stringify(status)}`);
    await sleep(50);
  }
}

/** The observer hears ClientDisconnected(id, error) for `id`. */
function departureOf(observer, id, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ClientDisconnected for ${id}`)), timeoutMs);
    observer.on("ClientDisconnected", (who, error) => {
      if (who === id) {
        clearTimeout(timer);
        resolve({ error, at: Date.now() });
      }
    });
  });
}

for (const protocol of PROTOCOLS) {
  test(`${protocol}: a TCP cut mid-stream loses and duplicates nothing; id, groups, user and streams survive`, async () => {
    const proxy = await tcpProxy(server);
    const user = `ann-${protocol}`;
    const group = `to-a-${protocol}`;
    const fromA = `from-a-${protocol}`;
    // Automatic reconnect is on, so a fallback to a full reconnect (new
    // connection) would show up in onreconnecting.
    const a = await connect(proxy, "/hubs/test", protocol, {
      token: token({ sub: user }),
      statefulReconnect: true,
      reconnect: [0, 0, 0],
    });
    const reconnecting = [];
    a.onreconnecting((error) => reconnecting.push(error));
    const closes = [];
    a.onclose((error) => closes.push(error));
    const b = await connect(server, "/hubs/test", "json");
    try {
      const id = a.connectionId;
      assert.equal(await a.invoke("GetConnectionId"), id);
      await a.invoke("JoinGroup", group);
      await b.invoke("JoinGroup", fromA);
      const toA = record(a, "GroupMessage");
      const toB = record(b, "GroupMessage");

      // Three numbered flows at once: a server stream to a, group messages
      // b → a (server-side group state), group messages a → b (the client's
      // own replay, de-duplicated by the server).
      const N = 300;
      const items = [];
      const streamed = new Promise((resolve, reject) =>
        a.stream("Counter", N, 4).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject }),
      );
      const numbered = async (connection, target) => {
        for (let i = 0; i < N; i++) {
          await connection.send("SendToGroup", target, i);
          if (i % 4 === 3) await sleep(15);
        }
      };
      const sends = Promise.all([numbered(b, group), numbered(a, fromA)]);

      await until(() => items.length >= N / 3, "a third of the stream");
      const acceptedBefore = proxy.accepted;
      proxy.cut();
      const atCut = { items: items.length, toA: toA.length, toB: toB.length };

      await Promise.all([streamed, sends]);
      await b.send("SendToGroup", group, "end");
      await a.send("SendToGroup", fromA, "end");
      await until(() => toA.at(-1)?.[0] === "end" && toB.at(-1)?.[0] === "end", "the end markers");

      assert.ok(atCut.items < N && atCut.toA < N && atCut.toB < N, `cut mid-stream: ${JSON.stringify(atCut)}`);
      assert.ok(proxy.accepted > acceptedBefore, "the client opened a new socket");
      assert.deepEqual(items, range(N));
      assert.deepEqual(
        toA.map((args) => args[0]),
        [...range(N), "end"],
      );
      assert.deepEqual(
        toB.map((args) => args[0]),
        [...range(N), "end"],
      );
      assert.equal(a.state, "Connected");
      assert.deepEqual(reconnecting, [], "no full reconnect");
      assert.deepEqual(closes, []);
      assert.equal(a.connectionId, id);
      assert.equal(await a.invoke("GetConnectionId"), id);
      assert.equal(await a.invoke("GetUserIdentifier"), user);
    } finally {
      await a.stop();
      await b.stop();
      await proxy.close();
    }
  });
}

test("several cuts in a row: every socket re-attaches to the same connection", async () => {
  const proxy = await tcpProxy(server);
  const a = await connect(proxy, "/hubs/test", "messagepack", { statefulReconnect: true });
  try {
    const id = a.connectionId;
    const N = 200;
    const items = [];
    const streamed = new Promise((resolve, reject) =>
      a.stream("Counter", N, 3).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject }),
    );
    for (const share of [0.2, 0.4, 0.6]) {
      await until(() => items.length >= N * share, `${share} of the stream`);
      proxy.cut();
    }
    await streamed;
    assert.deepEqual(items, range(N));
    assert.equal(await a.invoke("GetConnectionId"), id);
  } finally {
    await a.stop();
    await proxy.close();
  }
});

/**
 * Connects a client (with `options`) to the 2 s-window server through a
 * proxy, cuts it, and reports how the client closed and when (after the
 * cut) the server let the connection go.
 */
async function cutAndDepart(options) {
  const proxy = await tcpProxy(short);
  const observer = await connect(short, "/hubs/test", "json");
  await observer.invoke("Observe");
  const a = await connect(proxy, "/hubs/test", "json", options);
  try {
    const departed = departureOf(observer, a.connectionId);
    const clientClosed = closed(a);
    // A stateful client makes one re-attach attempt: the network refuses it.
    proxy.refusing = true;
    const cutAt = Date.now();
    proxy.cut();
    const clientError = await clientClosed;
    const { error, at } = await departed;
    return { clientError, error, elapsed: at - cutAt };
  } finally {
    await observer.stop();
    await proxy.close();
  }
}

test("a client that does not come back is disconnected when the reconnect window closes", async () => {
  const { clientError, error, elapsed } = await cutAndDepart({ statefulReconnect: true });
  assert.ok(clientError instanceof Error);
  assert.ok(elapsed >= 1500, `kept for the window (${elapsed} ms)`);
  assert.match(error, /did not reconnect within the disconnect timeout/);
});

test("without stateful reconnect a cut ends the connection at once", async () => {
  const { clientError, elapsed } = await cutAndDepart({});
  assert.ok(clientError instanceof Error);
  assert.ok(elapsed < 2000, `gone before any window (${elapsed} ms)`);
});

test("negotiate answers useStatefulReconnect only when asked for and allowed", async () => {
  const asked = await negotiate(server, "?negotiateVersion=1&useStatefulReconnect=true");
  assert.equal(Object.keys(asked)[0], "useStatefulReconnect");
  assert.equal(asked.useStatefulReconnect, true);
  assert.equal("useStatefulReconnect" in (await negotiate(server, "?negotiateVersion=1")), false);
  assert.equal(
    "useStatefulReconnect" in (await negotiate(server, "?negotiateVersion=1&useStatefulReconnect=false")),
    false,
  );
  // Case-insensitive key, as ASP.NET Core reads it.
  assert.equal((await negotiate(server, "?negotiateVersion=1&UseStatefulReconnect=True")).useStatefulReconnect, true);
  // Version 0 has no secret token (the id is public), so no re-attaching.
  assert.equal("useStatefulReconnect" in (await negotiate(server, "?useStatefulReconnect=true")), false);
  assert.equal(
    "useStatefulReconnect" in (await negotiate(off, "?negotiateVersion=1&useStatefulReconnect=true")),
    false,
  );
});

test("a server that refuses stateful reconnect still serves withStatefulReconnect() clients, without re-attach", async () => {
  const proxy = await tcpProxy(off);
  const a = await connect(proxy, "/hubs/test", "json", { statefulReconnect: true });
  try {
    assert.equal(await a.invoke("Echo", "hi"), "hi");
    const clientClosed = closed(a);
    proxy.cut();
    assert.ok((await clientClosed) instanceof Error);
  } finally {
    await proxy.close();
  }
});

for (const transport of ["ServerSentEvents", "LongPolling"]) {
  test(`a ${transport} client asking for stateful reconnect works as usual (the feature is WebSockets-only)`, async () => {
    const a = await connect(server, "/hubs/test", "json", { transport, statefulReconnect: true });
    try {
      assert.equal(await a.invoke("GetTransport"), transport);
      const items = [];
      await new Promise((resolve, reject) =>
        a.stream("Counter", 5, 0).subscribe({ next: (i) => items.push(i), complete: resolve, error: reject }),
      );
      assert.deepEqual(items, range(5));
    } finally {
      await a.stop();
    }
  });
}

test("raw protocol: Acks, Sequence first on re-attach, replay, de-duplication of the client's replay", async () => {
  const { raw: first, query, id } = await statefulRaw(server);
  first.send({ type: 1, invocationId: "1", target: "Echo", arguments: ["one"] });
  await first.until((f) => f.some((x) => x.json.type === 3));
  // The server acknowledges the client's message #1 within about a second.
  await first.until((f) => f.some((x) => x.json.type === 8), 3000);
  assert.deepEqual(
    first.frames.find((x) => x.json.type === 8).json,
    { type: 8, sequenceId: 1 },
  );
  first.close(); // the socket dies without a close frame

  // The client never acknowledged the server's #1 (the Completion): it is replayed.
  const second = await rawJson(server, "/hubs/test", { handshake: null, query });
  await second.until((f) => f.length >= 2);
  assert.deepEqual(
    second.frames.slice(0, 2).map((x) => x.json),
    [
      { type: 9, sequenceId: 1 },
      { type: 3, invocationId: "1", result: "one" },
    ],
  );
  // The client's own replay: Sequence(1), #1 again (already processed), then #2.
  second.send({ type: 9, sequenceId: 1 });
  second.send({ type: 1, invocationId: "1", target: "Echo", arguments: ["one"] });
  second.send({ type: 1, invocationId: "2", target: "Echo", arguments: ["two"] });
  await second.until((f) => f.some((x) => x.json.type === 8 && x.json.sequenceId === 2), 3000);
  await second.until((f) => f.some((x) => x.json.invocationId === "2"));
  assert.deepEqual(
    second.frames.filter((x) => x.json.type === 3).map((x) => x.json.invocationId),
    ["1", "2"],
    "the duplicate #1 was not run again",
  );
  // Acknowledge both server messages: the next socket gets nothing to replay.
  second.send({ type: 8, sequenceId: 2 });
  await sleep(100);
  second.close();

  const third = await rawJson(server, "/hubs/test", { handshake: null, query });
  await third.until((f) => f.length >= 1);
  third.send({ type: 9, sequenceId: 3 });
  third.send({ type: 1, invocationId: "3", target: "GetConnectionId", arguments: [] });
  await third.until((f) => f.some((x) => x.json.invocationId === "3"));
  const seen = third.frames.map((x) => x.json).filter((m) => m.type !== 8);
  assert.deepEqual(seen, [
    { type: 9, sequenceId: 3 },
    { type: 3, invocationId: "3", result: id },
  ]);

  // A close frame is a deliberate goodbye: the connection ends, no window.
  third.ws.close(1000);
  await third.until((f, c) => c !== null);
  await gone(server, query);
});

test("raw protocol: who may re-attach", async () => {
  const ws = server.url.replace("http", "ws");
  // Handshake version 1 turns stateful reconnect off even when negotiated.
  const v1 = await statefulRaw(server, 1);
  v1.raw.close();
  await gone(server, v1.query);

  // An authenticated connection re-attaches only as the same user.
  const body = await negotiate(server, "?negotiateVersion=1&useStatefulReconnect=true");
  const ann = token({ sub: "ann" });
  const base = `?id=${body.connectionToken}`;
  const owned = await rawJson(server, "/hubs/test", {
    handshake: { protocol: "json", version: 2 },
    query: `${base}&access_token=${ann}`,
  });
  await owned.until((f) => f.length >= 1);
  owned.close();
  assert.equal((await upgradeStatus(`${ws}/hubs/test${base}&access_token=${token({ sub: "bob" })}`)).status, 403);
  assert.equal((await upgradeStatus(`${ws}/hubs/test${base}`)).status, 403);
  assert.equal((await upgradeStatus(`${ws}/hubs/test?id=${body.connectionId}`)).status, 404, "the public id is no key");
  const back = await rawJson(server, "/hubs/test", { handshake: null, query: `${base}&access_token=${ann}` });
  await back.until((f) => f.length >= 1);
  assert.deepEqual(back.frames[0].json, { type: 9, sequenceId: 1 });
  back.send({ type: 9, sequenceId: 1 });
  back.send({ type: 1, invocationId: "u", target: "GetUserIdentifier", arguments: [] });
  await back.until((f) => f.some((x) => x.json.invocationId === "u"));
  assert.equal(back.frames.find((x) => x.json.invocationId === "u").json.result, "ann");
  back.ws.close(1000);
});

test("raw protocol: a Text frame that is not UTF-8 closes its socket with 1007, and the connection waits for the client", async () => {
  const { raw, query } = await statefulRaw(server);
  raw.ws.send(Buffer.from([0x7b, 0xff, 0x7d, 0x1e]), { binary: false });
  await raw.until((f, c) => c !== null);
  assert.equal(raw.closeInfo.code, 1007);
  // The connection is still there: a new socket re-attaches and is told
  // where the sequence stands.
  const back = await rawJson(server, "/hubs/test", { handshake: null, query });
  await back.until((f) => f.length >= 1);
  assert.deepEqual(back.frames[0].json, { type: 9, sequenceId: 1 });
  back.send({ type: 9, sequenceId: 1 });
  back.send({ type: 1, invocationId: "e", target: "Echo", arguments: ["still here"] });
  await back.until((f) => f.some((x) => x.json.invocationId === "e"));
  assert.equal(back.frames.find((x) => x.json.invocationId === "e").json.result, "still here");
  back.ws.close(1000);
  await gone(server, query);
});

test("raw protocol: a Sequence beyond what was sent closes the connection with an error", async () => {
  const { raw } = await statefulRaw(server);
  raw.send({ type: 1, invocationId: "1", target: "Echo", arguments: [1] });
  raw.send({ type: 9, sequenceId: 5 });
  await raw.until((f) => f.some((x) => x.json.type === 7));
  assert.deepEqual(raw.frames.find((x) => x.json.type === 7).json, {
    type: 7,
    error: "Connection closed with an error.",
    allowReconnect: true,
  });
});

test("replay buffer limit: sending pauses until acknowledged; a client that never acknowledges is a slow consumer", async () => {
  const observer = await connect(tight, "/hubs/test", "json", { keepAlive: 300 });
  await observer.invoke("Observe");
  try {
    const N = 400;
    const { raw } = await statefulRaw(tight);
    const items = () => raw.frames.filter((x) => x.json.type === 2).map((x) => x.json.item);
    raw.send({ type: 4, invocationId: "s", target: "Counter", arguments: [N, 0] });
    await raw.until((f) => f.some((x) => x.json.type === 2));
    await sleep(300);
    const paused = items().length;
    await sleep(300);
    assert.equal(items().length, paused, "nothing more without an Ack");
    const bytes = raw.frames
      .filter((x) => x.json.type === 2)
      .reduce((sum, x) => sum + JSON.stringify(x.json).length + 1, 0);
    assert.ok(paused < N && bytes >= 2000 && bytes < 2100, `${paused} items, ${bytes} bytes in flight`);
    // Acknowledging lets the rest through, in order.
    const deadline = Date.now() + 10000;
    while (!raw.frames.some((x) => x.json.type === 3)) {
      assert.ok(Date.now() < deadline, "the stream completes once acknowledged");
      raw.send({ type: 8, sequenceId: items().length });
      await sleep(20);
    }
    assert.deepEqual(items(), range(N));
    raw.ws.close(1000);

    // This one never acknowledges: once its buffer is full and nothing is
    // acknowledged for the client timeout, it is closed as a slow consumer.
    const silent = await statefulRaw(tight);
    const departed = departureOf(observer, silent.id);
    silent.raw.send({ type: 4, invocationId: "s", target: "Counter", arguments: [N, 0] });
    const { error } = await departed;
    assert.match(error, /SlowConsumerException/);
    await silent.raw.until((f, c) => c !== null);
  } finally {
    await observer.stop();
  }
});

test("acknowledgements are read even while the server waits on a full client-to-server stream", async () => {
  // The upload is echoed back; with a 2000-byte replay buffer the server soon
  // waits for an Ack, while the items sent ahead of that Ack fill the
  // upload's buffer. The Ack must still be read, or the connection stalls.
  const { raw } = await statefulRaw(tight);
  const N = 60;
  const item = (i) => `${i}:${"x".repeat(200)}`;
  raw.send({ type: 4, invocationId: "e", target: "EchoStream", arguments: [], streamIds: ["u"] });
  for (let i = 0; i < N; i++) raw.send({ type: 2, invocationId: "u", item: item(i) });
  raw.send({ type: 3, invocationId: "u" });
  const trackable = () => raw.frames.filter((x) => x.json.type >= 1 && x.json.type <= 5);
  const deadline = Date.now() + 10000;
  while (!raw.frames.some((x) => x.json.type === 3 && x.json.invocationId === "e")) {
    assert.ok(raw.closeInfo === null, "the connection stays open");
    assert.ok(Date.now() < deadline, `echoed ${trackable().length} of ${N}`);
    raw.send({ type: 8, sequenceId: trackable().length });
    await sleep(20);
  }
  const echoed = raw.frames.filter((x) => x.json.type === 2).map((x) => x.json.item);
  assert.deepEqual(echoed, range(N).map(item));
  raw.ws.close(1000);
});

test("messages sent while the client has no socket are delivered after it re-attaches", async () => {
  const proxy = await tcpProxy(server);
  const a = await connect(proxy, "/hubs/test", "json", { statefulReconnect: true });
  const b = await connect(server, "/hubs/test", "json");
  try {
    await a.invoke("JoinGroup", "during-cut");
    const got = record(a, "GroupMessage");
    proxy.holding = true;
    const acceptedBefore = proxy.accepted;
    proxy.cut();
    // The client's new socket is parked in the proxy: the server has none.
    await until(() => proxy.accepted > acceptedBefore, "the client's new socket");
    for (const i of [1, 2, 3]) await b.invoke("SendToGroup", "during-cut", i);
    await sleep(100);
    assert.deepEqual(got, []);
    proxy.release();
    await b.invoke("SendToGroup", "during-cut", "end");
    await until(() => got.at(-1)?.[0] === "end", "the end marker");
    assert.deepEqual(
      got.map((args) => args[0]),
      [1, 2, 3, "end"],
    );
    assert.equal(await a.invoke("GetConnectionId"), a.connectionId);
  } finally {
    await a.stop();
    await b.stop();
    await proxy.close();
  }
});

// Ending on purpose leaves no reconnect window: the client's stop() (Close
// message and close frame) and the server's abort (Close without
// allowReconnect; the client's one re-attach attempt gets 404).
for (const [how, end] of [
  ["the client's stop()", (a) => a.stop()],
  ["a server-side abort", (a) => a.invoke("Abort").catch(() => {})],
]) {
  test(`${how} ends a stateful connection at once and for good`, async () => {
    const observer = await connect(short, "/hubs/test", "json");
    await observer.invoke("Observe");
    const a = await connect(short, "/hubs/test", "json", { statefulReconnect: true });
    try {
      const departed = departureOf(observer, a.connectionId, 1500);
      const clientClosed = closed(a);
      await end(a);
      assert.equal(await clientClosed, undefined);
      assert.equal((await departed).error, null);
      assert.equal(a.state, "Disconnected");
    } finally {
      await observer.stop();
    }
  });
}
