// The README's programs as a reader would run them: the Node snippet
// saved as an `.mjs` file and run with node against the standalone server
// and against the hello-hub example, and the complete Rust program of
// "Use tidings in your own application" being the hello-hub example.

import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { startExample, startServer } from "./helpers.mjs";

const run = promisify(execFile);
const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");

/** The body of the first code block of `language` after `heading`. */
function codeBlock(heading, language) {
  const at = readme.indexOf(`\n${heading}\n`);
  assert.ok(at >= 0, `README has "${heading}"`);
  const open = readme.indexOf("\n```" + language + "\n", at);
  assert.ok(open >= 0, `a ${language} block after "${heading}"`);
  const start = open + language.length + 5;
  return readme.slice(start, readme.indexOf("\n```\n", start) + 1);
}

/** Saves the Node snippet as a `.mjs` file here (where its package is installed) and runs it. */
async function runSnippet(url) {
  const snippet = codeBlock("## Using it from a browser or Node", "js");
  // The one change: the port the test server listens on instead of 5000.
  assert.equal(snippet.split("http://127.0.0.1:5000").length, 2, "one server address in the snippet");
  const dir = mkdtempSync(join(import.meta.dirname, ".readme-"));
  try {
    const file = join(dir, "chat.mjs");
    writeFileSync(file, snippet.replace("http://127.0.0.1:5000", url));
    return await run(process.execPath, [file], { timeout: 20_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("README", () => {
  for (const [name, start] of [
    ["the standalone server", () => startServer()],
    ["the hello-hub example", () => startExample("hello-hub")],
  ]) {
    test(`the Node snippet runs as written against ${name} and exits`, async () => {
      const server = await start();
      try {
        const { stdout } = await runSnippet(server.url);
        assert.match(stdout, /^ann: hello$/m);
      } finally {
        await server.stop();
      }
    });
  }

  test("the complete Rust program is examples/hello-hub", () => {
    const program = readFileSync(new URL("../../examples/hello-hub/src/main.rs", import.meta.url), "utf8");
    assert.equal(codeBlock("## Use tidings in your own application", "rust"), program);
  });

  test("the Cargo.toml lines name the packages and tokio features the example builds with", () => {
    const lines = codeBlock("## Use tidings in your own application", "toml");
    const manifest = readFileSync(new URL("../../examples/hello-hub/Cargo.toml", import.meta.url), "utf8");
    for (const dep of manifest.slice(manifest.indexOf("[dependencies]")).matchAll(/^([\w-]+)\.workspace/gm)) {
      assert.match(lines, new RegExp(`^${dep[1]} = `, "m"), `${dep[1]} is listed`);
    }
    assert.match(lines, /path = "[^"]*crates\/tidings"/);
  });
});
