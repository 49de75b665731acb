// The demo token endpoint and the pages of the demo app, over plain HTTP:
// the endpoint exists only with --demo-tokens, refuses bad names, and signs
// tokens that the hubs accept (and refuse once tampered with).

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, test } from "node:test";
import { startServer } from "./helpers.mjs";

let plain;
let demo;
let other;
before(async () => {
  [plain, demo, other] = await Promise.all([
    startServer(),
    startServer(["--demo-tokens"]),
    startServer(["--demo-tokens"]),
  ]);
});
after(() => Promise.all([plain?.stop(), demo?.stop(), other?.stop()]));

const ask = (server, user) =>
  fetch(`${server.url}/demo/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });

const negotiate = (server, token) =>
  fetch(`${server.url}/hubs/chat/negotiate?negotiateVersion=1`, {
    method: "POST",
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
  });

test("the app's page, script and stylesheet are served, with a same-origin policy", async () => {
  for (const [path, type] of [
    ["/", "text/html"],
    ["/assets/app.js", "text/javascript"],
    ["/assets/app.css", "text/css"],
  ]) {
    const response = await fetch(`${plain.url}${path}`);
    assert.equal(response.status, 200, path);
    assert.ok(response.headers.get("content-type").startsWith(type), path);
    assert.match(response.headers.get("content-security-policy"), /default-src 'self'/);
    assert.ok((await response.text()).length > 0);
  }
  const page = await (await fetch(`${plain.url}/`)).text();
  assert.doesNotMatch(page, /https?:\/\//, "the page loads nothing from elsewhere");
});

test("without --demo-tokens there is no token endpoint", async () => {
  assert.equal((await ask(plain, "ann")).status, 404);
});

test("a demo token names the user and is accepted by the hubs", async () => {
  const response = await ask(demo, "  ann  ");
  assert.equal(response.status, 200);
  const { user, token, expiresIn } = await response.json();
  assert.equal(user, "ann");
  assert.equal(expiresIn, 3600);
  const [header, payload] = token.split(".").slice(0, 2).map((part) => JSON.parse(Buffer.from(part, "base64url").toString()));
  assert.equal(header.alg, "HS256");
  assert.equal(payload.sub, "ann");
  assert.equal(payload.name, "ann");
  assert.ok(payload.exp > Date.now() / 1000);

  assert.equal((await negotiate(demo, token)).status, 200);
  const tampered = token.slice(0, -2) + (token.endsWith("AA") ? "BB" : "AA");
  assert.equal((await negotiate(demo, tampered)).status, 401);
  // Each server makes its own random secret.
  assert.equal((await negotiate(other, token)).status, 401);
});

test("demo tokens carry the issuer and audience the server requires", async (t) => {
  const secret = "a secret of the test";
  const strict = await startServer([
    "--demo-tokens",
    "--jwt-secret",
    secret,
    "--jwt-issuer",
    "tidings-demo",
    "--jwt-audience",
    "chat-app",
  ]);
  t.after(() => strict.stop());
  const { token } = await (await ask(strict, "ann")).json();
  const payload = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
  assert.equal(payload.iss, "tidings-demo");
  assert.equal(payload.aud, "chat-app");
  assert.equal((await negotiate(strict, token)).status, 200);
  // The same claims signed with the same secret, without issuer and audience, are refused.
  const { iss, aud, ...bare } = payload;
  assert.equal((await negotiate(strict, sign({ ...bare, iss, aud }, secret))).status, 200);
  assert.equal((await negotiate(strict, sign(bare, secret))).status, 401);
});

/** An HS256 JWT of `claims`. */
function sign(claims, secret) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

test("bad user names are refused", async () => {
  for (const user of ["", "   ", "x".repeat(33), "ann\nbob"]) {
    const response = await ask(demo, user);
    assert.equal(response.status, 400, JSON.stringify(user));
    assert.match(await response.text(), /user name/);
  }
  const missing = await fetch(`${demo.url}/demo/token`, { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
  assert.ok(missing.status >= 400 && missing.status < 500);
});
