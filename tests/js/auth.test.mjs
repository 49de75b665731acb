// Authentication and authorization with the official client: JWT bearer
// tokens (HS256 with issuer/audience, RS256 and ES256 public keys) on every
// transport, refusals at negotiate, role-restricted hub methods, closing
// connections whose token expires, and tokens kept out of the logs.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, sign as cryptoSign } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  startServer,
  connect,
  next,
  closed,
  sleep,
  token,
  upgradeStatus,
  rejectsWith,
  signalR,
  JWT_SECRET,
} from "./helpers.mjs";

const ISSUER = "tidings-tests";
const AUDIENCE = "tidings";
const now = () => Math.floor(Date.now() / 1000);
const TRANSPORTS = ["WebSockets", "ServerSentEvents", "LongPolling"];

/** Claims every valid token of the HS256 server carries. */
const valid = (claims) => ({ iss: ISSUER, aud: AUDIENCE, exp: now() + 300, ...claims });

/** Signs a JWT with an asymmetric key: RS256 (RSA) or ES256 (P-256). */
function signWith(alg, privateKey, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${b64({ alg, typ: "JWT" })}.${b64(claims)}`;
  const options = alg === "ES256" ? { key: privateKey, dsaEncoding: "ieee-p1363" } : privateKey;
  return `${body}.${cryptoSign("sha256", Buffer.from(body), options).toString("base64url")}`;
}

const negotiate = (server, path, headers = {}) =>
  fetch(`${server.url}${path}/negotiate?negotiateVersion=1`, { method: "POST", headers });

describe("HS256 with issuer and audience", () => {
  let server;
  before(async () => {
    server = await startServer(
      ["--jwt-secret", JWT_SECRET, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
      { RUST_LOG: "debug" },
    );
  });
  after(() => server.stop());

  for (const transport of TRANSPORTS) {
    test(`a valid token identifies the user over ${transport}`, async () => {
      const c = await connect(server, "/hubs/test", "json", {
        transport,
        token: token(valid({ sub: "ann", roles: ["Reader"] })),
      });
      assert.equal(await c.invoke("GetUserIdentifier"), "ann");
      assert.equal(await c.invoke("GetClaim", "roles"), "Reader");
      assert.equal(await c.invoke("GetTransport"), transport);
      await c.stop();
    });
  }

  // Tokens issued for an ASP.NET Core backend name the user with `nameid`
  // or the long claim-type URI; SendToUser must reach that user.
  const NAME_IDENTIFIER = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";
  for (const claim of ["nameid", NAME_IDENTIFIER]) {
    for (const transport of TRANSPORTS) {
      test(`the ${claim === "nameid" ? "nameid" : "nameidentifier URI"} claim names the user over ${transport}`, async () => {
        const user = `dotnet-${transport}`;
        const c = await connect(server, "/hubs/test", "json", {
          transport,
          token: token(valid({ [claim]: user, name: "Dot Net" })),
        });
        const sender = await connect(server, "/hubs/test", "json", { token: token(valid({ sub: "sender" })) });
        assert.equal(await c.invoke("GetUserIdentifier"), user);
        const received = next(c, "UserMessage");
        await sender.invoke("SendToUser", user, { hello: user });
        assert.deepEqual(await received, [{ hello: user }]);
        await Promise.all([c.stop(), sender.stop()]);
      });
    }
  }

  test("of several name-identifier claims, the first in the token names the user", async () => {
    const cases = [
      [{ nameid: "first", sub: "second" }, "first"],
      [{ sub: "first", nameid: "second" }, "first"],
      [{ [NAME_IDENTIFIER]: "first", sub: "second", nameid: "third" }, "first"],
      [{ email: "e@example.com", name: "N" }, null],
    ];
    for (const [claims, expected] of cases) {
      const c = await connect(server, "/hubs/test", "json", { token: token(valid(claims)) });
      assert.equal(await c.invoke("GetUserIdentifier"), expected, JSON.stringify(claims));
      await c.stop();
    }
  });

  test("no token: anonymous on a hub that allows it", async () => {
    const c = await connect(server, "/hubs/test", "json");
    assert.equal(await c.invoke("GetUserIdentifier"), null);
    await c.stop();
  });

  const invalid = {
    "a bad signature": token(valid({ sub: "m" }), "another secret"),
    "an expired token": token(valid({ sub: "m", exp: now() - 10 })),
    "a token not yet valid": token(valid({ sub: "m", nbf: now() + 600 })),
    "the wrong issuer": token(valid({ sub: "m", iss: "someone-else" })),
    "the wrong audience": token(valid({ sub: "m", aud: "another-app" })),
    "no issuer": token({ sub: "m", aud: AUDIENCE }),
    "a token without expiry": token(valid({ sub: "m", exp: null })),
    "a malformed token": "not-a-jwt",
  };
  for (const [what, bad] of Object.entries(invalid)) {
    test(`${what} is refused with 401 at negotiate, even on an anonymous hub`, async () => {
      const res = await negotiate(server, "/hubs/test", { Authorization: `Bearer ${bad}` });
      assert.equal(res.status, 401);
      assert.equal(res.headers.get("www-authenticate"), "Bearer");
      await assert.rejects(connect(server, "/hubs/test", "json", { token: bad }), /401/);
    });
  }

  test("an invalid access_token is refused on WebSocket and SSE requests", async () => {
    const bad = token(valid({ sub: "m", exp: now() - 10 }));
    const ws = server.url.replace("http", "ws");
    assert.equal((await upgradeStatus(`${ws}/hubs/test?access_token=${bad}`)).status, 401);
    await assert.rejects(
      connect(server, "/hubs/test", "json", { token: bad, skipNegotiation: true }),
      /401|WebSocket/,
    );
    const body = await (await negotiate(server, "/hubs/test")).json();
    const sse = await fetch(`${server.url}/hubs/test?id=${body.connectionToken}&access_token=${bad}`, {
      headers: { Accept: "text/event-stream" },
    });
    assert.equal(sse.status, 401);
  });

  test("POSTs and polls of an HTTP transport are checked against the connection's user", async () => {
    const ann = token(valid({ sub: "ann" }));
    const body = await (await negotiate(server, "/hubs/test", { Authorization: `Bearer ${ann}` })).json();
    const url = `${server.url}/hubs/test?id=${body.connectionToken}`;
    const first = await fetch(url, { headers: { Authorization: `Bearer ${ann}` } });
    assert.equal(first.status, 200);
    const handshake = '{"protocol":"json","version":1}\x1e';
    const as = (t, message = handshake) =>
      fetch(url, { method: "POST", body: message, headers: t ? { Authorization: `Bearer ${t}` } : {} });
    assert.equal((await as(token(valid({ sub: "bob" })))).status, 403);
    assert.equal((await as(token(valid({ sub: "ann" }), "forged"))).status, 401);
    assert.equal((await as(ann)).status, 200);
    // A request without a token is the connection's user's (some clients
    // send it only on some requests).
    assert.equal((await as(null, '{"type":6}\x1e')).status, 200);
    // Every poll too: another user's token, or one that does not verify, is refused.
    const poll = (t) => fetch(url, { headers: t ? { Authorization: `Bearer ${t}` } : {} });
    assert.equal((await poll(token(valid({ sub: "bob" })))).status, 403);
    assert.equal((await poll(token(valid({ sub: "ann", exp: now() - 10 })))).status, 401);
    const answered = await poll(null);
    assert.equal(answered.status, 200);
    assert.equal(await answered.text(), "{}\x1e", "the handshake answer, to the connection's user");
    // Ending it too: another user cannot.
    const end = (t) => fetch(url, { method: "DELETE", headers: t ? { Authorization: `Bearer ${t}` } : {} });
    assert.equal((await end(token(valid({ sub: "bob" })))).status, 403);
    assert.equal((await end(null)).status, 202);
  });

  test("tokens never appear in the server's logs", async () => {
    const secret = token(valid({ sub: "logged?" }));
    const c = await connect(server, "/hubs/test", "json", { token: secret, transport: "LongPolling" });
    await c.invoke("Echo", 1);
    await c.stop();
    const bad = token(valid({ sub: "logged?" }), "wrong");
    await negotiate(server, "/hubs/test", { Authorization: `Bearer ${bad}` });
    await upgradeStatus(`${server.url.replace("http", "ws")}/hubs/test?access_token=${bad}`);
    await sleep(200);
    const logs = server.stderr() + server.stdout();
    assert.ok(logs.includes("request refused"), "debug logs are on");
    for (const t of [secret, bad]) {
      assert.equal(logs.includes(t), false);
      assert.equal(logs.includes(t.split(".")[2]), false, "not even the signature");
    }
  });
});

for (const [alg, keyType, options] of [
  ["RS256", "rsa", { modulusLength: 2048 }],
  ["ES256", "ec", { namedCurve: "P-256" }],
]) {
  describe(`${alg} with a public key file`, () => {
    let server;
    const { publicKey, privateKey } = generateKeyPairSync(keyType, options);
    const other = generateKeyPairSync(keyType, options);
    before(async () => {
      const dir = mkdtempSync(join(tmpdir(), "tidings-jwt-"));
      const file = join(dir, "public.pem");
      writeFileSync(file, publicKey.export({ type: "spki", format: "pem" }));
      // The key file from the environment, as a deployment would set it.
      server = await startServer([], { TIDINGS_JWT_PUBLIC_KEY: file, TIDINGS_JWT_AUDIENCE: AUDIENCE });
    });
    after(() => server.stop());

    test("tokens signed with the private key are accepted", async () => {
      const t = signWith(alg, privateKey, { sub: `${alg}-user`, aud: AUDIENCE, exp: now() + 60 });
      for (const transport of TRANSPORTS) {
        const c = await connect(server, "/hubs/test", "json", { token: t, transport });
        assert.equal(await c.invoke("GetUserIdentifier"), `${alg}-user`);
        await c.stop();
      }
    });

    test("another key, an HS256 token or a missing audience gets 401", async () => {
      const pem = publicKey.export({ type: "spki", format: "pem" });
      const refused = [
        signWith(alg, other.privateKey, { sub: "x", aud: AUDIENCE }),
        // The public key used as an HMAC secret (algorithm confusion).
        token({ sub: "x", aud: AUDIENCE }, pem),
        signWith(alg, privateKey, { sub: "x" }),
      ];
      for (const bad of refused) {
        assert.equal((await negotiate(server, "/hubs/test", { Authorization: `Bearer ${bad}` })).status, 401);
      }
    });
  });
}

describe("another claim names the user: --user-id-claim and auth.user_id_claim", () => {
  let servers;
  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), "tidings-user-id-"));
    const file = join(dir, "tidings.toml");
    writeFileSync(file, `[auth]\njwt_secret = "${JWT_SECRET}"\nuser_id_claim = "email"\n`);
    servers = await Promise.all([
      startServer(["--jwt-secret", JWT_SECRET, "--user-id-claim", "email"]),
      startServer(["--config", file]),
    ]);
  });
  after(() => Promise.all(servers.map((s) => s.stop())));

  for (const [i, how] of [[0, "the flag"], [1, "the configuration file"]]) {
    test(`messages to the user reach the connection whose token has that claim (${how})`, async () => {
      const server = servers[i];
      const ann = await connect(server, "/hubs/test", "json", {
        token: token({ sub: "ann", email: "ann@example.com" }),
      });
      const noEmail = await connect(server, "/hubs/test", "json", { token: token({ sub: "bob" }) });
      assert.equal(await ann.invoke("GetUserIdentifier"), "ann@example.com");
      assert.equal(await ann.invoke("GetClaim", "sub"), "ann");
      // Without the claim, no user id: `sub` is no fallback.
      assert.equal(await noEmail.invoke("GetUserIdentifier"), null);
      const received = [];
      ann.on("UserMessage", (m) => received.push(m));
      // Sent to "ann" (the sub) first: it must reach nobody.
      await noEmail.invoke("SendToUser", "ann", "by sub");
      const byEmail = next(ann, "UserMessage");
      await noEmail.invoke("SendToUser", "ann@example.com", "by email");
      assert.deepEqual(await byEmail, ["by email"]);
      assert.deepEqual(received, ["by email"]);
      await Promise.all([ann.stop(), noEmail.stop()]);
    });
  }
});

describe("role-restricted methods on the chat hub", () => {
  let server;
  before(async () => {
    server = await startServer(["--jwt-secret", JWT_SECRET]);
  });
  after(() => server.stop());

  for (const transport of TRANSPORTS) {
    test(`DeleteMessage is for Admin only, over ${transport}`, async () => {
      const admin = await connect(server, "/hubs/chat", "json", {
        transport,
        token: token({ sub: "root", roles: ["Ops", "Admin"] }),
      });
      const user = await connect(server, "/hubs/chat", "json", { transport, token: token({ sub: "joe", role: "User" }) });
      const anonymous = await connect(server, "/hubs/chat", "json", { transport });

      const deniedText = "Failed to invoke 'DeleteMessage' because user is unauthorized";
      await rejectsWith(assert, user.invoke("DeleteMessage", "m-1"), deniedText);
      await rejectsWith(assert, anonymous.invoke("DeleteMessage", "m-1"), deniedText);
      // The refused callers stay connected and can call other methods.
      const echoed = next(admin, "ReceiveMessage");
      await user.invoke("SendMessage", "joe", "still here");
      assert.deepEqual(await echoed, ["joe", "still here"]);

      const seenByUser = next(user, "MessageDeleted");
      const seenByAdmin = next(admin, "MessageDeleted");
      await admin.invoke("DeleteMessage", "m-2");
      assert.deepEqual(await seenByUser, ["m-2"]);
      assert.deepEqual(await seenByAdmin, ["m-2"]);
      await Promise.all([admin.stop(), user.stop(), anonymous.stop()]);
    });
  }
});

describe("expiring tokens", () => {
  let server;
  let keepOpen;
  before(async () => {
    [server, keepOpen] = await Promise.all([
      startServer(["--jwt-secret", JWT_SECRET]),
      startServer(["--jwt-secret", JWT_SECRET, "--close-on-auth-expiration", "false", "--jwt-require-exp", "false"]),
    ]);
  });
  after(() => Promise.all([server.stop(), keepOpen.stop()]));

  for (const transport of TRANSPORTS) {
    test(`a connection is closed with a clear error when its token expires (${transport})`, async () => {
      const exp = now() + 2;
      const c = await connect(server, "/hubs/test", "json", { transport, token: token({ sub: "brief", exp }) });
      const ended = closed(c, 8000);
      assert.equal(await c.invoke("GetUserIdentifier"), "brief");
      const error = await ended;
      assert.ok(Date.now() >= exp * 1000, "not before the expiry");
      assert.match(
        String(error?.message),
        /Connection closed with an error\. AuthenticationExpiredException: The authentication of the connection expired\./,
      );
    });
  }

  test("a client with automatic reconnect comes back with a fresh token", async () => {
    let issued = 0;
    const c = new signalR.HubConnectionBuilder()
      .withUrl(`${server.url}/hubs/test`, {
        transport: signalR.HttpTransportType.WebSockets,
        accessTokenFactory: () => {
          issued += 1;
          return token({ sub: "renewed", exp: now() + 2 });
        },
      })
      .withAutomaticReconnect([0])
      .configureLogging(signalR.LogLevel.None)
      .build();
    const reconnecting = new Promise((resolve) => c.onreconnecting(resolve));
    const reconnected = new Promise((resolve) => c.onreconnected(resolve));
    await c.start();
    const firstId = c.connectionId;
    assert.match(String((await reconnecting)?.message), /AuthenticationExpiredException/);
    await reconnected;
    assert.notEqual(c.connectionId, firstId);
    assert.equal(await c.invoke("GetUserIdentifier"), "renewed");
    assert.ok(issued >= 2, "a new token was asked for");
    await c.stop();
  });

  test("a token without expiry is refused by default, accepted with --jwt-require-exp false", async () => {
    const forever = token({ sub: "forever", exp: null });
    assert.equal((await negotiate(server, "/hubs/test", { Authorization: `Bearer ${forever}` })).status, 401);
    const c = await connect(keepOpen, "/hubs/test", "json", { token: forever });
    assert.equal(await c.invoke("GetUserIdentifier"), "forever");
    await c.stop();
  });

  test("with the option off, the connection outlives its token", async () => {
    const c = await connect(keepOpen, "/hubs/test", "json", { token: token({ sub: "long", exp: now() + 1 }) });
    await sleep(2500);
    assert.equal(await c.invoke("GetUserIdentifier"), "long");
    await c.stop();
  });
});
