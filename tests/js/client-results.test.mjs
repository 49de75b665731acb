// Client results: the server invokes a client method and waits for what
// the client's handler returns, over every transport and protocol.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, next, rawJson, rejectsWith, COMBOS } from "./helpers.mjs";

let server;
before(async () => {
  // One invocation at a time per client (the default), which is what makes
  // a hub method waiting on its own caller dangerous.
  server = await startServer(["--max-parallel-invocations", "1"]);
});
after(async () => {
  await server.stop();
});

const failed = (method, text) => `An unexpected error occurred invoking '${method}' on the server. HubException: ${text}`;

/** A promise and the function that settles it. */
function signal() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

for (const [transport, protocol] of COMBOS) {
  describe(`[${transport} ${protocol}]`, () => {
    const open = () => connect(server, "/hubs/test", protocol, { transport });

    test("AskCaller returns what the caller's handler returned", async () => {
      const c = await open();
      c.on("Double", (x) => x * 2);
      c.on("describe", async (x) => ({ got: x, list: [1, "two"] }));
      assert.equal(await c.invoke("AskCaller", "Double", 21), 42);
      // Handler names are matched case-insensitively by the client.
      assert.deepEqual(await c.invoke("AskCaller", "Describe", "it"), { got: "it", list: [1, "two"] });
      await c.stop();
    });

    test("a throwing handler, or none, fails the call with the client's text", async () => {
      const c = await open();
      c.on("Fail", () => {
        throw new Error("nope");
      });
      await rejectsWith(assert, c.invoke("AskCaller", "Fail", 1), failed("AskCaller", "Error: nope"));
      await rejectsWith(assert, c.invoke("AskCaller", "NoSuchHandler", 1), failed("AskCaller", "Client didn't provide a result."));
      assert.equal(await c.invoke("Add", 1, 2), 3);
      await c.stop();
    });

    test("a result of the wrong type is reported", async () => {
      const c = await open();
      c.on("Text", () => "not a number");
      c.on("Number", () => 7);
      assert.equal(await c.invoke("AskCallerForNumber", "Number"), 7);
      await assert.rejects(c.invoke("AskCallerForNumber", "Text"), (error) => {
        assert.ok(
          error.message.startsWith(failed("AskCallerForNumber", "Error trying to deserialize result to i64. ")),
          error.message,
        );
        return true;
      });
      await c.stop();
    });

    test("a client that does not answer in time fails the call; its late answer is ignored", async () => {
      const c = await open();
      const asked = signal();
      c.on("Slow", async (x) => {
        asked.resolve();
        await new Promise((r) => setTimeout(r, 300));
        return x;
      });
      await rejectsWith(
        assert,
        c.invoke("AskCallerWithin", "Slow", 1, 100),
        failed("AskCallerWithin", "The client did not provide a result within 100 ms."),
      );
      await asked.promise;
      // The answer arrives after the server gave up; the connection is fine.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await c.invoke("Add", 2, 3), 5);
      assert.equal(await c.invoke("AskCallerWithin", "Slow", "in time", 2000), "in time");
      await c.stop();
    });

    test("a handler may call the hub before it answers", async () => {
      // The waiting method gives its invocation slot up; otherwise the
      // client's Add could never run and both sides would wait forever.
      const c = await open();
      c.on("Nested", async (x) => (await c.invoke("Add", x, 1)) * 10);
      assert.equal(await c.invoke("AskCallerWithin", "Nested", 4, 3000), 50);
      await c.stop();
    });

    test("asking another connection, which disconnects before answering", async () => {
      const a = await open();
      const b = await open();
      const bId = await b.invoke("GetConnectionId");
      b.on("Triple", (x) => x * 3);
      assert.equal(await a.invoke("AskClient", bId, "Triple", 3), 9);

      const asked = signal();
      b.on("Never", () => {
        asked.resolve();
        return new Promise(() => {});
      });
      const pending = rejectsWith(assert, a.invoke("AskClient", bId, "Never", 1), failed("AskClient", `Connection '${bId}' disconnected.`));
      await asked.promise;
      await b.stop();
      await pending;
      await rejectsWith(assert, a.invoke("AskClient", bId, "Triple", 1), failed("AskClient", `Connection '${bId}' does not exist.`));
      await a.stop();
    });

    test("a client result from the hub context (a background task)", async () => {
      const a = await open();
      const b = await open();
      const bId = await b.invoke("GetConnectionId");
      b.on("Double", (x) => x * 2);
      let answer = next(a, "BackgroundAnswer");
      await a.invoke("AskClientInBackground", bId, "Double", 5);
      assert.deepEqual(await answer, [true, 10]);

      answer = next(a, "BackgroundAnswer");
      await a.invoke("AskClientInBackground", "missing", "Double", 5);
      assert.deepEqual(await answer, [false, "Connection 'missing' does not exist."]);
      await a.stop();
      await b.stop();
    });
  });
}

describe("raw frames", () => {
  test("ids are s1, s2, …; only the asked connection can answer", async () => {
    const asked = await rawJson(server, "/hubs/test");
    const other = await rawJson(server, "/hubs/test");
    const caller = await connect(server, "/hubs/test", "json");
    asked.send({ type: 1, invocationId: "0", target: "GetConnectionId", arguments: [] });
    await asked.until((frames) => frames.some((f) => f.json.invocationId === "0"));
    const askedId = asked.frames.find((f) => f.json.invocationId === "0").json.result;

    const result = caller.invoke("AskClient", askedId, "Question", "why?");
    await asked.until((frames) => frames.some((f) => f.json.target === "Question"));
    const invocation = asked.frames.find((f) => f.json.target === "Question").json;
    assert.match(invocation.invocationId, /^s\d+$/);
    assert.deepEqual(invocation.arguments, ["why?"]);

    // Another connection cannot answer for it; unknown ids are ignored.
    other.send({ type: 3, invocationId: invocation.invocationId, result: "forged" });
    asked.send({ type: 3, invocationId: "s999999", result: "stray" });
    other.send({ type: 1, invocationId: "1", target: "Add", arguments: [1, 1] });
    await other.until((frames) => frames.some((f) => f.json.invocationId === "1"));

    asked.send({ type: 3, invocationId: invocation.invocationId, result: "because" });
    assert.equal(await result, "because");
    await caller.stop();
    asked.close();
    other.close();
  });
});
