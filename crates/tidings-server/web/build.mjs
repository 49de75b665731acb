// Bundles the demo app into dist/: app.js (src/main.ts with the
// @microsoft/signalr client), app.css and index.html. The server embeds
// dist/ at compile time. With --check, builds in memory and fails when the
// committed dist/ differs from what the sources produce.

import { readFile, writeFile, mkdir } from "node:fs/promises";
import * as esbuild from "esbuild";

const here = new URL(".", import.meta.url);
const check = process.argv.includes("--check");

const result = await esbuild.build({
  entryPoints: [new URL("src/main.ts", here).pathname],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  write: false,
  logLevel: "warning",
});

const outputs = {
  "app.js": result.outputFiles[0].text,
  "app.css": await readFile(new URL("static/app.css", here), "utf8"),
  "index.html": await readFile(new URL("static/index.html", here), "utf8"),
};

const dist = new URL("dist/", here);
if (check) {
  const stale = [];
  for (const [name, text] of Object.entries(outputs)) {
    const committed = await readFile(new URL(name, dist), "utf8").catch(() => null);
    if (committed !== text) stale.push(name);
  }
  if (stale.length > 0) {
    console.error(`dist/ is out of date (${stale.join(", ")}): run \`npm run build\` in ${here.pathname}`);
    process.exit(1);
  }
  console.log("dist/ matches the sources");
} else {
  await mkdir(dist, { recursive: true });
  for (const [name, text] of Object.entries(outputs)) {
    await writeFile(new URL(name, dist), text);
  }
  console.log(`wrote ${Object.keys(outputs).map((n) => `dist/${n}`).join(", ")}`);
}
