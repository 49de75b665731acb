// The demo web app at `/`, with the official client bundled into the page,
// in Chromium: chat between two browsers over WebSockets and over Long
// Polling, the dashboard updating by itself, notifications to every tab of
// one user and to no one else, and the reconnect banner across a server
// restart.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WAIT_MS, launchBrowser, openApp, screenshot, signIn, startServer, waitForUsers } from "./helpers.mjs";

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await startServer(["--demo-tokens"]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Two signed-in people in the lobby, each in a browser context of their own. */
async function twoPeople(query, t) {
  const contexts = [await browser.newContext(), await browser.newContext()];
  t.after(() => Promise.all(contexts.map((c) => c.close())));
  const [ann, bob] = await Promise.all(contexts.map((c) => openApp(c, server.url, query)));
  await signIn(ann, "ann");
  await signIn(bob, "bob");
  await waitForUsers(ann, ["ann", "bob"]);
  await waitForUsers(bob, ["ann", "bob"]);
  return { ann, bob };
}

async function chatBetweenTwo(ann, bob, text) {
  // Typing in one browser shows in the other.
  await bob.locator("#message-input").pressSequentially("hel");
  await ann.locator("#typing", { hasText: "bob is typing" }).waitFor({ timeout: WAIT_MS });

  await ann.fill("#message-input", text);
  await ann.press("#message-input", "Enter");
  const received = bob.locator("#messages li.message", { hasText: text });
  await received.waitFor({ timeout: WAIT_MS });
  assert.equal(await received.locator(".sender").textContent(), "ann");
  await ann.locator("#messages li.message", { hasText: text }).waitFor({ timeout: WAIT_MS });
}

for (const [name, query, file] of [
  ["WebSockets", "", "websockets"],
  ["Server-Sent Events", "?transport=sse", "sse"],
  ["Long Polling", "?transport=longpolling", "longpolling"],
]) {
  test(`chat: a message typed in one browser appears in the other (${name})`, { timeout: 90_000 }, async (t) => {
    const { ann, bob } = await twoPeople(query, t);
    // Requests made from here on: the chat's messages and presence updates.
    const sockets = [];
    const polls = [];
    for (const page of [ann, bob]) {
      page.on("websocket", (ws) => sockets.push(ws.url()));
      page.on("request", (r) => r.method() === "GET" && /\/hubs\/chat\?id=/.test(r.url()) && polls.push(r.url()));
    }

    const text = `hello from ann over ${name}`;
    await chatBetweenTwo(ann, bob, text);
    await screenshot(ann, `chat-${file}-ann`);
    await screenshot(bob, `chat-${file}-bob`);

    if (query) {
      assert.deepEqual(sockets, [], `no WebSocket with ${query}`);
    }
    if (file === "longpolling") {
      assert.ok(polls.length > 0, "the chat is carried by polls");
    }

    // Leaving a room updates who is online in it for those who stay.
    await bob.locator(".room-tab[data-room=lobby] .room-leave").click();
    await ann.locator("#messages li.event", { hasText: "bob left" }).waitFor({ timeout: WAIT_MS });
    assert.deepEqual(await ann.locator("#room-users li").allTextContents(), ["ann"]);
    assert.deepEqual([...ann.errors, ...bob.errors], []);
  });
}

test("chat: rooms are separate, and a closed tab leaves its rooms", { timeout: 90_000 }, async (t) => {
  const { ann, bob } = await twoPeople("", t);
  await ann.fill("#join-input", "rust");
  await ann.press("#join-input", "Enter");
  await waitForUsers(ann, ["ann"]);
  await ann.fill("#message-input", "only for the rust room");
  await ann.press("#message-input", "Enter");
  await ann.locator("#messages li.message", { hasText: "only for the rust room" }).waitFor({ timeout: WAIT_MS });

  // Bob is not in "rust": a marker to the lobby arrives, the rust message never did.
  await ann.locator(".room-tab[data-room=lobby] .room-open").click();
  await ann.fill("#message-input", "marker in the lobby");
  await ann.press("#message-input", "Enter");
  await bob.locator("#messages li.message", { hasText: "marker in the lobby" }).waitFor({ timeout: WAIT_MS });
  assert.equal(await bob.locator("#messages li", { hasText: "only for the rust room" }).count(), 0);
  assert.equal(await bob.locator(".room-tab[data-room=rust]").count(), 0);

  await bob.close();
  await ann.locator("#messages li.event", { hasText: "bob left" }).waitFor({ timeout: WAIT_MS });
  await screenshot(ann, "chat-rooms");
});

test("dashboard: the metrics chart updates by itself", { timeout: 60_000 }, async (t) => {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await openApp(context, server.url);
  const samples = page.locator("#metric-samples");
  await page.waitForFunction(() => Number(document.querySelector("#metric-samples").textContent) >= 2, null, {
    timeout: WAIT_MS,
  });
  const first = { samples: Number(await samples.textContent()), updated: await page.textContent("#metric-updated") };
  // Nothing is done on the page: the next push comes from the server's background task.
  await page.waitForFunction((n) => Number(document.querySelector("#metric-samples").textContent) > n, first.samples, {
    timeout: WAIT_MS,
  });
  assert.notEqual(await page.textContent("#metric-updated"), first.updated);
  assert.ok(Number(await page.textContent("#metric-connections")) >= 2, "this page's two connections are counted");
  for (const chart of ["connections", "rate", "p99"]) {
    const points = await page.getAttribute(`#chart-${chart} polyline`, "points");
    assert.ok(points.trim().split(" ").length >= 3, `${chart}: ${points}`);
  }
  await screenshot(page, "dashboard");
  assert.deepEqual(page.errors, []);
});

test("notifications: reach every tab of the user and no one else", { timeout: 90_000 }, async (t) => {
  const annContext = await browser.newContext();
  const bobContext = await browser.newContext();
  t.after(() => Promise.all([annContext.close(), bobContext.close()]));
  const annTabs = await Promise.all([openApp(annContext, server.url), openApp(annContext, server.url)]);
  const bob = await openApp(bobContext, server.url);
  for (const tab of annTabs) await signIn(tab, "ann");
  await signIn(bob, "bob");

  await bob.fill("#notify-user", "ann");
  await bob.fill("#notify-text", "your build is green");
  await bob.click("#notify-form button[type=submit]");
  for (const tab of annTabs) {
    const item = tab.locator("#notification-list li", { hasText: "your build is green" });
    await item.waitFor({ timeout: WAIT_MS });
    assert.equal(await item.locator(".from").textContent(), "bob");
  }

  // A later notification to bob arrives on bob's connection after anything
  // sent to it before: once it is there, the first one would have been too.
  await annTabs[0].fill("#notify-user", "bob");
  await annTabs[0].fill("#notify-text", "thanks");
  await annTabs[0].click("#notify-form button[type=submit]");
  await bob.locator("#notification-list li", { hasText: "thanks" }).waitFor({ timeout: WAIT_MS });
  assert.deepEqual(await bob.locator("#notification-list li .text").allTextContents(), ["thanks"]);
  for (const tab of annTabs) {
    assert.equal(await tab.locator("#notification-list li", { hasText: "thanks" }).count(), 0);
  }
  await screenshot(annTabs[1], "notifications-ann-second-tab");
  await screenshot(bob, "notifications-bob");
  assert.deepEqual([...annTabs.flatMap((p) => p.errors), ...bob.errors], []);
});

describe("server restart", () => {
  // The page's address keeps its port, so the server comes back on it.
  test("the reconnect banner shows, and rooms are joined again", { timeout: 120_000 }, async (t) => {
    let own = await startServer(["--demo-tokens"]);
    t.after(() => own.stop());
    const context = await browser.newContext();
    t.after(() => context.close());
    const page = await openApp(context, own.url);
    await signIn(page, "ann");
    await waitForUsers(page, ["ann"]);

    await own.stop();
    const banner = page.locator("#banner");
    await page.locator("#banner[data-state=reconnecting]").waitFor({ timeout: WAIT_MS });
    assert.match(await banner.textContent(), /Reconnecting/);
    await screenshot(page, "reconnecting");

    // Same port, new process: a new random token secret, no groups.
    own = await startServer(["--demo-tokens", "--listen", `127.0.0.1:${new URL(page.url()).port}`]);
    await page.locator("#banner[data-state=reconnected]").waitFor({ timeout: 30_000 });
    assert.match(await banner.textContent(), /Reconnected/);
    await screenshot(page, "reconnected");

    await waitForUsers(page, ["ann"]);
    await page.fill("#message-input", "back again");
    await page.press("#message-input", "Enter");
    const echoed = page.locator("#messages li.message", { hasText: "back again" });
    await echoed.waitFor({ timeout: WAIT_MS });
    assert.equal(await echoed.locator(".sender").textContent(), "ann");
  });

  test("back without demo tokens, the app goes on anonymously", { timeout: 120_000 }, async (t) => {
    let own = await startServer(["--demo-tokens"]);
    t.after(() => own.stop());
    const context = await browser.newContext();
    t.after(() => context.close());
    const page = await openApp(context, own.url);
    await signIn(page, "ann");

    await own.stop();
    await page.locator("#banner[data-state=reconnecting]").waitFor({ timeout: WAIT_MS });
    await page.evaluate(() => delete document.body.dataset.chat);
    own = await startServer(["--listen", `127.0.0.1:${new URL(page.url()).port}`]);
    await page.locator("body[data-chat=ready]").waitFor({ timeout: 30_000 });
    await page.locator("#signin-error", { hasText: "--demo-tokens" }).waitFor({ timeout: WAIT_MS });
    assert.equal(await page.locator("#signed-in").isVisible(), false);
    assert.equal(await page.locator("#signin-form").isVisible(), true);

    await page.fill("#message-input", "anonymous now");
    await page.press("#message-input", "Enter");
    const echoed = page.locator("#messages li.message", { hasText: "anonymous now" });
    await echoed.waitFor({ timeout: WAIT_MS });
    assert.equal(await echoed.locator(".sender").textContent(), "Anonymous");
    await screenshot(page, "demo-tokens-gone");
  });
});
