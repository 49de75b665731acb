// Hub behaviour seen through the official client, for both hub protocols:
// invocations and their errors, every target, users, groups, lifecycle
// hooks, the chat and dashboard hubs.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, next, record, closed, sleep, token, rejectsWith, COMBOS, JWT_SECRET } from "./helpers.mjs";

let plain; // default options: errors without detail
let detailed; // detailed errors, JWT users, fast dashboard
before(async () => {
  plain = await startServer();
  detailed = await startServer(["--detailed-errors", "--metrics-period-ms", "200"], { TIDINGS_JWT_SECRET: JWT_SECRET });
});
after(async () => {
  await plain.stop();
  await detailed.stop();
});

for (const [transport, protocol] of COMBOS) {
  describe(`[${transport} ${protocol}]`, () => {
    const open = (server, path = "/hubs/test", options = {}) => connect(server, path, protocol, { transport, ...options });

    test("the connection runs over the requested transport", async () => {
      const c = await open(plain);
      assert.equal(await c.invoke("GetTransport"), transport);
      await c.stop();
    });

    test("invoke returns typed results; names are case-insensitive", async () => {
      const c = await open(plain);
      assert.equal(await c.invoke("Add", 2, 40), 42);
      assert.equal(await c.invoke("add", -2, 1), -1);
      for (const value of ["text", 12, 1.5, true, null, [1, "two", null], { nested: { list: [1, 2], s: "é€😀" } }]) {
        assert.deepEqual(await c.invoke("Echo", value), value);
      }
      assert.equal(await c.invoke("ECHO", "loud"), "loud");
      // A method without a result completes with null, as on ASP.NET Core.
      assert.equal(await c.invoke("Nothing"), null);
      await c.stop();
    });

    test("unknown methods and bad arguments get ASP.NET Core's errors", async () => {
      const c = await open(plain);
      await rejectsWith(assert, c.invoke("Missing"), "Failed to invoke 'Missing' due to an error on the server. HubException: Method does not exist.");
      await rejectsWith(assert, c.invoke("Add", 1), "Failed to invoke 'Add' due to an error on the server.");
      await rejectsWith(assert, c.invoke("Add", "one", 2), "Failed to invoke 'Add' due to an error on the server.");
      await rejectsWith(assert, c.invoke("Add", 1.5, 2), "Failed to invoke 'Add' due to an error on the server.");
      // The connection is still usable after every error.
      assert.equal(await c.invoke("Add", 1, 1), 2);
      await c.stop();

      const d = await open(detailed);
      await rejectsWith(assert, d.invoke("Add", 1), "Failed to invoke 'Add' due to an error on the server. InvalidDataException: Invocation provides 1 argument(s) but target expects 2.");
      await rejectsWith(
        assert,
        d.invoke("Add", "one", 2),
        "Failed to invoke 'Add' due to an error on the server. InvalidDataException: Error binding arguments. Make sure that the types of the provided values match the types of the hub method being invoked.",
      );
      await d.stop();
    });

    test("failing methods: generic text unless detailed; HubException text always", async () => {
      const c = await open(plain);
      await rejectsWith(assert, c.invoke("Throw", "secret detail"), "An unexpected error occurred invoking 'Throw' on the server.");
      await rejectsWith(assert, c.invoke("ThrowHubException", "for you"), "An unexpected error occurred invoking 'ThrowHubException' on the server. HubException: for you");
      await rejectsWith(assert, c.invoke("Panic"), "An unexpected error occurred invoking 'Panic' on the server.");
      assert.equal(await c.invoke("Echo", "alive"), "alive");
      await c.stop();

      const d = await open(detailed);
      await rejectsWith(assert, d.invoke("Throw", "boom"), "An unexpected error occurred invoking 'Throw' on the server. InvalidOperationException: boom");
      await d.stop();
    });

    test("an error's type name is the one the application chose, shown only in detail", async () => {
      const c = await open(plain);
      await rejectsWith(assert, c.invoke("ThrowTyped", "KeyNotFoundException", "no order 7"), "An unexpected error occurred invoking 'ThrowTyped' on the server.");
      await c.stop();
      const d = await open(detailed);
      await rejectsWith(
        assert,
        d.invoke("ThrowTyped", "KeyNotFoundException", "no order 7"),
        "An unexpected error occurred invoking 'ThrowTyped' on the server. KeyNotFoundException: no order 7",
      );
      await d.stop();
    });

    test("send() of an unknown method is ignored and the connection survives", async () => {
      const c = await open(plain);
      await c.send("DoesNotExist", 1, 2);
      await c.send("Add", "bad");
      assert.equal(await c.invoke("Echo", "still here"), "still here");
      await c.stop();
    });

    test("one invocation at a time per client by default", async () => {
      const c = await open(plain);
      const order = [];
      const slow = c.invoke("Delay", 300, "slow").then((v) => order.push(v));
      const fast = c.invoke("Echo", "fast").then((v) => order.push(v));
      await Promise.all([slow, fast]);
      assert.deepEqual(order, ["slow", "fast"]);
      await c.stop();
    });

    test("all, others, caller, client, clients, all-except", async () => {
      const [a, b, c] = await Promise.all([open(plain), open(plain), open(plain)]);
      const got = { a: record(a, "Broadcast"), b: record(b, "Broadcast"), c: record(c, "Broadcast") };
      const direct = { a: record(a, "DirectMessage"), b: record(b, "DirectMessage"), c: record(c, "DirectMessage") };

      await a.invoke("Broadcast", "to all");
      await a.invoke("BroadcastOthers", "to others");
      await a.invoke("BroadcastAllExcept", [b.connectionId], "not b");
      await a.invoke("SendToCaller", "me");
      await a.invoke("SendToConnection", c.connectionId, "just c");
      await a.invoke("SendToConnections", [b.connectionId, c.connectionId, c.connectionId], "b and c");
      await a.invoke("Echo", "flush");
      await b.invoke("Echo", "flush");
      await c.invoke("Echo", "flush");
      await sleep(100);

      assert.deepEqual(got.a, [["to all"], ["not b"]]);
      assert.deepEqual(got.b, [["to all"], ["to others"]]);
      assert.deepEqual(got.c, [["to all"], ["to others"], ["not b"]]);
      assert.deepEqual(direct.a, [["me"]]);
      assert.deepEqual(direct.b, [["b and c"]]);
      assert.deepEqual(direct.c, [["just c"], ["b and c"]]);
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    });

    test("groups: join, leave, group, groups, group-except, others-in-group, membership from outside", async () => {
      const [a, b, c] = await Promise.all([open(plain), open(plain), open(plain)]);
      const got = { a: record(a, "GroupMessage"), b: record(b, "GroupMessage"), c: record(c, "GroupMessage") };
      await a.invoke("JoinGroup", "red");
      await b.invoke("JoinGroup", "red");
      await b.invoke("JoinGroup", "blue");
      // c is added by someone else, by connection id.
      await a.invoke("AddToGroup", c.connectionId, "blue");

      await c.invoke("SendToGroup", "red", 1);
      await c.invoke("SendToGroups", ["red", "blue"], 2); // b is in both: one copy
      await c.invoke("SendToGroupExcept", "red", [a.connectionId], 3);
      await b.invoke("SendToOthersInGroup", "red", 4);
      await b.invoke("LeaveGroup", "red");
      await c.invoke("SendToGroup", "red", 5);
      await c.invoke("SendToGroup", "nobody", 6);
      await Promise.all([a.invoke("Echo", 0), b.invoke("Echo", 0), c.invoke("Echo", 0)]);
      await sleep(100);

      assert.deepEqual(got.a, [[1], [2], [4], [5]]);
      assert.deepEqual(got.b, [[1], [2], [3]]);
      assert.deepEqual(got.c, [[2]]);
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    });

    test("users: every connection of a user, several users, user identifier and claims", async () => {
      const alice = token({ sub: "alice", name: "Alice" });
      const bob = token({ sub: "bob", name: "Bob", role: ["admin", "ops"] });
      const [a1, a2, b, anon] = await Promise.all([
        open(detailed, "/hubs/test", { token: alice }),
        open(detailed, "/hubs/test", { token: alice }),
        open(detailed, "/hubs/test", { token: bob }),
        open(detailed),
      ]);
      assert.equal(await a1.invoke("GetUserIdentifier"), "alice");
      assert.equal(await b.invoke("GetClaim", "role"), "admin");
      assert.equal(await anon.invoke("GetUserIdentifier"), null);

      const got = [a1, a2, b, anon].map((c) => record(c, "UserMessage"));
      await anon.invoke("SendToUser", "alice", "hi alice");
      await anon.invoke("SendToUsers", ["alice", "bob"], "hi both");
      await Promise.all([a1, a2, b, anon].map((c) => c.invoke("Echo", 0)));
      await sleep(100);
      assert.deepEqual(got[0], [["hi alice"], ["hi both"]]);
      assert.deepEqual(got[1], [["hi alice"], ["hi both"]]);
      assert.deepEqual(got[2], [["hi both"]]);
      assert.deepEqual(got[3], []);
      await Promise.all([a1, a2, b, anon].map((c) => c.stop()));
    });

    test("a bad token is refused with 401 before any connection exists", async () => {
      const bad = token({ sub: "mallory" }, "wrong secret");
      await assert.rejects(open(detailed, "/hubs/test", { token: bad }), /401/);
    });

    test("request context: query string and headers of the transport request", async () => {
      const c = await open(plain, "/hubs/test?room=lobby&access_token=hidden");
      assert.equal(await c.invoke("GetQuery", "room"), "lobby");
      // The token is a credential and is not exposed.
      assert.equal(await c.invoke("GetQuery", "access_token"), null);
      assert.match(await c.invoke("GetHeader", "user-agent"), /Microsoft SignalR/);
      await c.stop();
    });

    test("on_disconnected runs with the error, and Abort closes without reconnect", async () => {
      const observer = await open(plain);
      await observer.invoke("Observe");
      const leaving = await open(plain);
      const leavingId = leaving.connectionId;
      const gone = next(observer, "ClientDisconnected");
      await leaving.stop();
      assert.deepEqual(await gone, [leavingId, null]);

      const aborted = await open(plain);
      const abortedId = aborted.connectionId;
      const whenClosed = closed(aborted);
      const abortedGone = next(observer, "ClientDisconnected");
      aborted.invoke("Abort").catch(() => {});
      assert.equal(await whenClosed, undefined);
      assert.deepEqual(await abortedGone, [abortedId, null]);
      await observer.stop();
    });

    test("chat hub: messages, rooms, typing, Connected on connect", async () => {
      const ann = build2(detailed, token({ sub: "ann", name: "Ann" }));
      const bob = build2(detailed);
      const [annConnected, bobConnected] = [next(ann, "Connected"), next(bob, "Connected")];
      await Promise.all([ann.start(), bob.start()]);
      assert.deepEqual(await annConnected, [ann.connectionId]);
      assert.deepEqual(await bobConnected, [bob.connectionId]);

      const received = next(bob, "ReceiveMessage");
      await ann.invoke("SendMessage", "ann", "hello");
      assert.deepEqual(await received, ["ann", "hello"]);

      await bob.invoke("JoinRoom", "lobby");
      const joined = next(bob, "UserJoined");
      await ann.invoke("JoinRoom", "lobby");
      assert.deepEqual(await joined, ["Ann"]);

      const roomMessage = next(bob, "ReceiveRoomMessage");
      await ann.invoke("SendToRoom", "lobby", "hi room");
      const [msg] = await roomMessage;
      assert.equal(msg.room, "lobby");
      assert.equal(msg.sender, "Ann");
      assert.equal(msg.content, "hi room");
      assert.ok(Math.abs(Date.parse(msg.timestamp) - Date.now()) < 60000, msg.timestamp);

      const typing = next(bob, "TypingIndicator");
      const annTyping = record(ann, "TypingIndicator");
      await ann.invoke("StartTyping");
      assert.deepEqual(await typing, ["Ann", true]);
      const bobTyping = next(ann, "TypingIndicator");
      await bob.invoke("StartTyping");
      assert.deepEqual(await bobTyping, ["Anonymous", true]);
      assert.equal(annTyping.length, 1); // ann did not hear her own typing

      const left = next(bob, "UserLeft");
      await ann.invoke("LeaveRoom", "lobby");
      assert.deepEqual(await left, ["Ann"]);
      await Promise.all([ann.stop(), bob.stop()]);

      function build2(server, tok) {
        return buildConnection(server, "/hubs/chat", protocol, tok, transport);
      }
    });

    test("chat hub: typing in a room, notifications to every connection of a user, presence after a disconnect", async () => {
      const room = `room-${transport}-${protocol}`;
      const build3 = (claims) => buildConnection(detailed, "/hubs/chat", protocol, token(claims), transport);
      const [ann1, ann2, bob] = [
        build3({ sub: "ann", name: "Ann" }),
        build3({ sub: "ann", name: "Ann" }),
        build3({ sub: "bob", name: "Bob" }),
      ];
      await Promise.all([ann1, ann2, bob].map((c) => c.start()));
      await ann1.invoke("JoinRoom", room);
      await bob.invoke("JoinRoom", room);

      // Typing goes to the room's other members only.
      const typing = next(ann1, "RoomTyping");
      const [bobTyping, ann2Typing] = [record(bob, "RoomTyping"), record(ann2, "RoomTyping")];
      await bob.invoke("StartTypingInRoom", room);
      assert.deepEqual(await typing, [{ room, user: "Bob" }]);

      // A notification reaches both connections of ann, and not bob.
      const toAnn = [next(ann1, "Notification"), next(ann2, "Notification")];
      const bobNotes = record(bob, "Notification");
      await bob.invoke("NotifyUser", "ann", "hi ann");
      for (const [notification] of await Promise.all(toAnn)) {
        assert.equal(notification.from, "Bob");
        assert.equal(notification.text, "hi ann");
        assert.ok(Math.abs(Date.parse(notification.timestamp) - Date.now()) < 60000, notification.timestamp);
      }
      // Messages to one connection arrive in order: once this one is there,
      // anything sent to bob before it would have been too.
      const marker = next(bob, "Notification");
      await ann1.invoke("NotifyUser", "bob", "marker");
      assert.equal((await marker)[0].text, "marker");
      assert.deepEqual(bobNotes.map(([n]) => n.text), ["marker"]);
      assert.deepEqual(bobTyping, []);
      assert.deepEqual(ann2Typing, []);

      // A member that disconnects leaves its rooms.
      const [left, users] = [next(ann1, "UserLeft"), next(ann1, "RoomUsers")];
      await bob.stop();
      assert.deepEqual(await left, ["Bob"]);
      assert.deepEqual(await users, [{ room, users: ["ann"], connections: 1 }]);
      await Promise.all([ann1.stop(), ann2.stop()]);
    });

    test("dashboard hub: metrics pushed from a background task", async () => {
      const c = await open(detailed, "/hubs/dashboard");
      const [metrics] = await next(c, "Metrics", 3000);
      assert.equal(typeof metrics.uptimeSeconds, "number");
      assert.ok(metrics.connections >= 1);
      assert.ok(metrics.activeConnections >= 1);
      assert.equal(typeof metrics.messagesPerSecond, "number");
      assert.ok(metrics.p99LatencyMs === null || metrics.p99LatencyMs >= 0);
      assert.ok(!Number.isNaN(Date.parse(metrics.timestamp)));
      await c.stop();
    });
  });
}

import { build } from "./helpers.mjs";
function buildConnection(server, path, protocol, tok, transport) {
  return build(server, path, protocol, tok ? { token: tok, transport } : { transport });
}
