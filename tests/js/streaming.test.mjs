// Server-to-client streaming over every transport and protocol.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, next, sleep, rejectsWith, COMBOS } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.stop();
});

/** Collects a stream's items; resolves on completion, rejects on error. */
function collect(connection, method, ...args) {
  const items = [];
  const done = new Promise((resolve, reject) => {
    connection.stream(method, ...args).subscribe({
      next: (item) => items.push(item),
      complete: () => resolve(items),
      error: (error) => reject(Object.assign(error, { items })),
    });
  });
  return done;
}

for (const [transport, protocol] of COMBOS) {
  describe(`[${transport} ${protocol}]`, () => {
    const open = () => connect(server, "/hubs/test", protocol, { transport });

    test("items arrive in order, then completion", async () => {
      const c = await open();
      assert.deepEqual(await collect(c, "Counter", 5, 10), [0, 1, 2, 3, 4]);
      assert.deepEqual(await collect(c, "counter", 0, 0), []);
      await c.stop();
    });

    test("a failing stream delivers its items, then the error", async () => {
      const c = await open();
      await assert.rejects(collect(c, "CounterThenFail", 2, "bad"), (error) => {
        assert.equal(error.message, "An error occurred on the server while streaming results. HubException: bad");
        assert.deepEqual(error.items, [0, 1]);
        return true;
      });
      await c.stop();
    });

    test("disposing the subscription stops the producer on the server", async () => {
      const c = await open();
      const items = [];
      const subscription = c.stream("Counter", 100000, 20).subscribe({
        next: (item) => items.push(item),
        complete: () => {},
        error: () => {},
      });
      while (items.length < 3) await sleep(10);
      assert.equal(await c.invoke("GetActiveStreams"), 1);
      subscription.dispose();
      let active = 1;
      for (let i = 0; i < 100 && active > 0; i++) {
        await sleep(20);
        active = await c.invoke("GetActiveStreams");
      }
      assert.equal(active, 0);
      await c.stop();
    });

    test("stream then dispose at once: the method runs and its cancellation token fires", async () => {
      const c = await open();
      const key = `dispose-${transport}-${protocol}`;
      const told = next(c, "StreamCancelled");
      // Disposed before anything arrived: the client sends StreamInvocation
      // and CancelInvocation back to back.
      c.stream("Watched", key).subscribe({ next: () => {}, complete: () => {}, error: () => {} }).dispose();
      // The method's last message, sent when its token was cancelled.
      assert.deepEqual(await told, [key]);
      assert.equal(await c.invoke("GetWatched", key), "cancelled");
      await c.stop();
    });

    test("a stream's cancellation token fires when its connection ends", async () => {
      const c = await open();
      const observer = await open();
      const key = `disconnect-${transport}-${protocol}`;
      await new Promise((resolve, reject) => {
        c.stream("Watched", key).subscribe({ next: resolve, complete: () => {}, error: reject });
      });
      assert.equal(await observer.invoke("GetWatched", key), "started");
      await c.stop();
      let state = "started";
      for (let i = 0; i < 100 && state !== "cancelled"; i++) {
        await sleep(20);
        state = await observer.invoke("GetWatched", key);
      }
      assert.equal(state, "cancelled");
      await observer.stop();
    });

    test("stream and invoke are not interchangeable", async () => {
      const c = await open();
      await rejectsWith(
        assert,
        c.invoke("Counter", 1, 0),
        "The client attempted to invoke the streaming 'Counter' method with a non-streaming invocation.",
      );
      await rejectsWith(
        assert,
        collect(c, "Echo", 1),
        "The client attempted to invoke the non-streaming 'Echo' method with a streaming invocation.",
      );
      await c.stop();
    });
  });
}
