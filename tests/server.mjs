// Starting the standalone server for the Node test suites (tests/js,
// tests/ts, tests/browser). Node's own modules only, so every suite can
// import it whatever packages it installed.

import { spawn } from "node:child_process";

/** The server binary: `TIDINGS_BIN`, or the debug build of this checkout. */
export const BIN = process.env.TIDINGS_BIN ?? new URL("../target/debug/tidings", import.meta.url).pathname;

/**
 * Starts the server (on a free port unless `--listen` is given) and
 * resolves once it listens, with its URL and port, its output so far
 * (`stderr()`, `stdout()`), the `exited` promise and `stop()`, which kills
 * it and waits for the exit.
 */
export async function startServer(args = [], env = {}) {
  const listen = args.includes("--listen") ? [] : ["--listen", "127.0.0.1:0"];
  return startProgram(BIN, [...listen, ...args], env);
}

/**
 * Starts any program that prints `listening on http://…` once it listens
 * (the server, the examples), with the same handle as `startServer`.
 */
export async function startProgram(bin, args = [], env = {}) {
  const child = spawn(bin, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  let out = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${bin} did not start: ${stderr}`)), 15_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[\d.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited with ${code ?? signal}: ${stderr}`));
    });
  });
  return {
    url,
    port: Number(new URL(url).port),
    child,
    exited,
    stderr: () => stderr,
    stdout: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}
