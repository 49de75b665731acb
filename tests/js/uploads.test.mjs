// Client-to-server streaming (a Subject passed as an argument) over every
// transport and protocol, plus the exact frames for ids the server does not
// know.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, sleep, rejectsWith, rawJson, signalR, COMBOS } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.stop();
});

/** Collects a stream's items; resolves on completion, rejects on error. */
function collect(stream) {
  const items = [];
  return new Promise((resolve, reject) => {
    stream.subscribe({
      next: (item) => items.push(item),
      complete: () => resolve(items),
      error: (error) => reject(Object.assign(error, { items })),
    });
  });
}

/**
 * Counts the StreamItems `connection` hands to its transport and keeps the
 * promises of its sends, so that a test can let the client's stream
 * messages go out before it stops the connection.
 */
function trackSends(connection) {
  const sent = { items: 0, pending: [] };
  const send = connection._sendWithProtocol.bind(connection);
  connection._sendWithProtocol = (message) => {
    if (message.type === signalR.MessageType.StreamItem) sent.items++;
    const promise = send(message);
    sent.pending.push(promise.catch(() => {}));
    return promise;
  };
  connection.sent = sent;
  return connection;
}

/** Stops `connection` once every message it queued has been sent. */
async function stop(connection) {
  const { pending } = connection.sent;
  let seen;
  do {
    // Each settled send may start the next one of the client's queue.
    seen = pending.length;
    await Promise.all(pending);
    await sleep(1);
  } while (pending.length !== seen);
  await connection.stop();
}

/** Polls `read` until it returns `expected` (or gives up after ~2 s). */
async function eventually(read, expected) {
  let value;
  for (let i = 0; i < 100; i++) {
    value = await read();
    if (value === expected) break;
    await sleep(20);
  }
  return value;
}

for (const [transport, protocol] of COMBOS) {
  describe(`[${transport} ${protocol}]`, () => {
    const open = async () => trackSends(await connect(server, "/hubs/test", protocol, { transport }));

    test("Sum reads a Subject to its end", async () => {
      const c = await open();
      const numbers = new signalR.Subject();
      const total = c.invoke("Sum", numbers);
      for (const n of [1, 2, 3, 4, 5, 0.5]) {
        numbers.next(n);
        await sleep(1);
      }
      numbers.complete();
      assert.equal(await total, 15.5);

      const empty = new signalR.Subject();
      const zero = c.invoke("Sum", empty);
      empty.complete();
      assert.equal(await zero, 0);
      await stop(c);
    });

    test("EchoStream streams back what it receives, as it arrives", async () => {
      const c = await open();
      const input = new signalR.Subject();
      const seen = [];
      let resolveFirst;
      const first = new Promise((r) => (resolveFirst = r));
      const done = new Promise((resolve, reject) => {
        c.stream("EchoStream", input).subscribe({
          next: (item) => {
            seen.push(item);
            resolveFirst();
          },
          complete: () => resolve(seen),
          error: reject,
        });
      });
      input.next("a");
      // The first item comes back before the client sends the next one.
      await first;
      assert.deepEqual(seen, ["a"]);
      for (const item of [1, { x: [1, 2] }, null]) input.next(item);
      input.complete();
      assert.deepEqual(await done, ["a", 1, { x: [1, 2] }, null]);
      await stop(c);
    });

    test("several streams in one invocation map to the parameters in order", async () => {
      const c = await open();
      const first = new signalR.Subject();
      const second = new signalR.Subject();
      // The official client only extracts non-adjacent Subject arguments
      // (it splices them out while iterating), hence the separator between.
      const joined = c.invoke("ConcatStreams", first, "|", second);
      first.next("a");
      second.next("x");
      first.next("b");
      second.next("y");
      second.complete();
      first.next("c");
      first.complete();
      assert.equal(await joined, "abc|xy");
      await stop(c);
    });

    test("a client error ends the upload stream with that error", async () => {
      const c = await open();
      const numbers = new signalR.Subject();
      const total = c.invoke("Sum", numbers);
      numbers.next(1);
      numbers.error(new Error("bad input"));
      await rejectsWith(assert, total, "An unexpected error occurred invoking 'Sum' on the server. HubException: bad input");

      const input = new signalR.Subject();
      const echoed = collect(c.stream("EchoStream", input));
      input.next("kept");
      input.error(new Error("gone wrong"));
      await assert.rejects(echoed, (error) => {
        assert.equal(error.message, "An error occurred on the server while streaming results. HubException: gone wrong");
        assert.deepEqual(error.items, ["kept"]);
        return true;
      });
      // The connection is still fine.
      assert.equal(await c.invoke("Add", 1, 1), 2);
      await stop(c);
    });

    test("an item of the wrong type fails the stream", async () => {
      const c = await open();
      const numbers = new signalR.Subject();
      const total = c.invoke("Sum", numbers);
      numbers.next("not a number");
      numbers.complete();
      await rejectsWith(assert, total, "An unexpected error occurred invoking 'Sum' on the server. HubException: Failed to bind Stream message.");
      await stop(c);
    });

    test("a method fed by a stream does not hold an invocation slot", async () => {
      // The server allows one invocation at a time per client; an open
      // upload must not block the client's other calls.
      const c = await open();
      const numbers = new signalR.Subject();
      const total = c.invoke("Sum", numbers);
      numbers.next(2);
      assert.equal(await c.invoke("Add", 1, 2), 3);
      numbers.next(3);
      numbers.complete();
      assert.equal(await total, 5);
      await stop(c);
    });

    test("a full upload buffer pauses reading the client until the method reads", async () => {
      const c = await open();
      const other = await open();
      const id = await c.invoke("GetConnectionId");
      const items = new signalR.Subject();
      const counted = c.invoke("CountAfterRelease", items);
      // Well over the buffer (StreamBufferCapacity = 10).
      for (let i = 0; i < 40; i++) items.next(i);
      items.complete();
      // The client sends stream items one after the other, after the
      // invocation; once more than buffer + 1 are on their way, the server
      // must have stopped reading, and the Echo below queues behind them.
      while (c.sent.items < 12) await sleep(5);
      let echoed = false;
      const echo = c.invoke("Echo", "after").then((value) => {
        echoed = true;
        return value;
      });
      await sleep(400);
      assert.equal(echoed, false, "the server read past a full upload buffer");
      await other.invoke("Release", id);
      assert.equal(await counted, 40);
      assert.equal(await echo, "after");
      await stop(c);
      await stop(other);
    });

    test("streams still open when the invocation ends are closed by the server", async () => {
      const c = await open();
      const items = new signalR.Subject();
      await c.invoke("KeepUpload", items);
      items.next(1);
      // A background task still holds the stream; it ends because the
      // server closed it, not because the client completed it.
      assert.equal(await eventually(() => c.invoke("GetLiveUploads"), 0), 0);
      // Later items for the closed stream are ignored.
      items.next(2);
      items.complete();
      assert.equal(await c.invoke("Add", 2, 2), 4);
      await stop(c);
    });
  });
}

describe("raw frames", () => {
  test("items and completions for unknown stream ids are ignored", async () => {
    const raw = await rawJson(server, "/hubs/test");
    raw.send({ type: 2, invocationId: "77", item: 1 });
    raw.send({ type: 3, invocationId: "77" });
    raw.send({ type: 3, invocationId: "78", error: "nobody listens" });
    raw.send({ type: 1, invocationId: "1", target: "Add", arguments: [1, 2] });
    await raw.until((frames) => frames.some((f) => f.json.invocationId === "1"));
    assert.deepEqual(raw.frames.find((f) => f.json.invocationId === "1").json, { type: 3, invocationId: "1", result: 3 });
    raw.close();
  });

  test("stream ids must match the stream parameters", async () => {
    const raw = await rawJson(server, "/hubs/test");
    raw.send({ type: 1, invocationId: "1", target: "Sum", arguments: [] });
    raw.send({ type: 1, invocationId: "2", target: "Add", arguments: [1, 2], streamIds: ["5"] });
    raw.send({ type: 1, invocationId: "3", target: "Sum", arguments: [], streamIds: ["6"] });
    raw.send({ type: 2, invocationId: "6", item: 4 });
    raw.send({ type: 2, invocationId: "6", item: 5 });
    raw.send({ type: 3, invocationId: "6" });
    await raw.until((frames) => ["1", "2", "3"].every((id) => frames.some((f) => f.json.invocationId === id)));
    const reply = (id) => raw.frames.find((f) => f.json.invocationId === id).json;
    assert.equal(reply("1").error, "An unexpected error occurred invoking 'Sum' on the server. HubException: Client sent 0 stream(s), Hub method expects 1.");
    assert.equal(reply("2").error, "An unexpected error occurred invoking 'Add' on the server. HubException: Client sent 1 stream(s), Hub method expects 0.");
    assert.deepEqual(reply("3"), { type: 3, invocationId: "3", result: 9 });
    raw.close();
  });
});
