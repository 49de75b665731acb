// Helpers for the REST publish API suites: tokens signed with an access
// key whose audience is the request URL, and requests made with fetch as
// any backend would.

import { token } from "./helpers.mjs";

export const ACCESS_KEY = "rest-access-key-0123456789";

/** A REST API token for `url`, valid for `ttl` seconds. */
export function restToken(url, { key = ACCESS_KEY, ttl = 60, aud = url } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return token({ aud, iat: now, exp: now + ttl }, key);
}

/**
 * Calls the REST API of `server`: `path` is appended to the server's URL.
 * Resolves with `{ status, headers, body }` (the body parsed as JSON when
 * it is JSON, else its text).
 */
export async function rest(server, method, path, { body, key, auth = true, token: given, headers = {} } = {}) {
  const url = `${server.url}${path}`;
  const init = { method, headers: { ...headers } };
  if (auth) init.headers.authorization = `Bearer ${given ?? restToken(url, { key })}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  let parsed = text;
  if ((response.headers.get("content-type") ?? "").startsWith("application/json") && text) parsed = JSON.parse(text);
  return { status: response.status, headers: response.headers, body: parsed };
}
