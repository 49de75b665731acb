// Shared helpers of the browser suite: start the standalone server, launch
// Debian's Chromium through playwright-core, open the demo app, and write
// screenshots to target/screenshots/.

import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { startServer } from "../server.mjs";

export { startServer };

const ROOT = new URL("../../", import.meta.url);
export const SCREENSHOTS = new URL("target/screenshots/", ROOT).pathname;

/** How long a condition may take to become true. */
export const WAIT_MS = 20_000;


/** Chromium from the system (Debian's package), headless. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? "/usr/bin/chromium",
    headless: true,
  });
}

/**
 * Opens the demo app at `url` + `query` in a new page of `context` and
 * waits until the chat connection is up and its rooms are joined. Page
 * errors are collected in `page.errors`.
 */
export async function openApp(context, url, query = "") {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (error) => page.errors.push(error.message));
  page.on("console", (message) => {
    // Failed requests are reported (with their URL) by the response handler.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      page.errors.push(message.text());
    }
  });
  page.on("response", (response) => {
    const request = response.request();
    // When the client stops, it posts a Close message without waiting for it
    // and at once ends the Long Polling connection, so that the server may
    // have forgotten the connection when the Close arrives (404), as
    // ASP.NET Core would have; the client ignores that failure.
    const closeMessage = request.method() === "POST" && /^\{"type":7[,}]/.test(request.postData() ?? "");
    if (response.status() >= 400 && !(response.status() === 404 && closeMessage)) {
      page.errors.push(`${response.status()} ${request.method()} ${response.url()}`);
    }
  });
  await page.goto(`${url}/${query}`);
  await page.locator("body[data-chat=ready]").waitFor({ timeout: WAIT_MS });
  return page;
}

/** Signs in as `user` through the header form and waits for the new connection. */
export async function signIn(page, user) {
  await page.evaluate(() => delete document.body.dataset.chat);
  await page.fill("#signin-name", user);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#signed-in-user", { hasText: user }).waitFor({ timeout: WAIT_MS });
  await page.locator("body[data-chat=ready]").waitFor({ timeout: WAIT_MS });
}

/** Waits until the current room of `page` lists `users` as online. */
export async function waitForUsers(page, users) {
  for (const user of users) {
    await page.locator("#room-users li", { hasText: user }).waitFor({ timeout: WAIT_MS });
  }
}

/** Writes a full-page screenshot to target/screenshots/<name>.png. */
export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: `${SCREENSHOTS}${name}.png`, fullPage: true });
}
