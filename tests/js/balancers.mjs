// A tidings cluster behind a real load balancer: HAProxy or nginx, run with
// the committed example configuration (deploy/haproxy.cfg,
// deploy/nginx.conf) in which only the site-specific lines (listen address,
// servers, log path) are swapped for those of the run. The servers share a
// test redis-server; any one of them can be stopped (a crash or a graceful
// shutdown) and started again on its port, behind the same balancer.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer } from "./helpers.mjs";
import { freePort, startRedis, until } from "./cluster.mjs";

export const BALANCERS = ["haproxy", "nginx"];

const DEPLOY = new URL("../../deploy/", import.meta.url).pathname;

/** The balancer's program: on the PATH, or in /usr/sbin where Debian puts it (off a user's PATH). */
function program(kind) {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"];
  return dirs.map((dir) => join(dir, kind)).find((path) => existsSync(path)) ?? kind;
}

/**
 * `text` with every match of `pattern` (a global regex) replaced; throws
 * where there is none, so that a change of the committed file's shape
 * fails the tests instead of leaving its example values in the run.
 */
function swap(text, pattern, replace) {
  if (!pattern.test(text)) throw new Error(`the committed configuration has no ${pattern}`);
  return text.replace(pattern, replace);
}

/**
 * The committed configuration of `kind` for balancer port `port` and the
 * tidings servers on `ports` (in order), with files under `dir`.
 */
export async function renderConfig(kind, { port, ports, dir }) {
  const text = await readFile(join(DEPLOY, kind === "haproxy" ? "haproxy.cfg" : "nginx.conf"), "utf8");
  // The example's server lines are replaced by one line per test server,
  // written with the first example line's options.
  const servers = (line) => {
    let first = true;
    return (_example, indent, name, rest) => {
      if (!first) return "";
      first = false;
      return ports.map((p, i) => `${indent}${line(name, i, `127.0.0.1:${p}`)}${rest}`).join("\n") + "\n";
    };
  };
  if (kind === "haproxy") {
    let cfg = swap(text, /^(\s*)bind \S+$/gm, (_m, indent) => `${indent}bind 127.0.0.1:${port}`);
    cfg = swap(
      cfg,
      /^(\s*)server (tidings)\d+ \S+(.*)\n/gm,
      servers((name, i, address) => `server ${name}${i + 1} ${address}`),
    );
    return cfg;
  }
  let conf = swap(text, /^(\s*)listen \S+;$/gm, (_m, indent) => `${indent}listen 127.0.0.1:${port};`);
  conf = swap(conf, /^(\s*)server ()\S+:\d+( .*)\n/gm, servers((_name, _i, address) => `server ${address}`));
  conf = swap(conf, /^(\s*)access_log \S+ /gm, (_m, indent) => `${indent}access_log ${join(dir, "access.log")} `);
  // Not in the example (a system nginx has writable defaults): temporary
  // files in the run's directory, as the tests need not run as root.
  conf = swap(conf, /^http \{$/m, () =>
    ["http {", ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((t) => `    ${t}_temp_path ${join(dir, t)};`)].join(
      "\n",
    ),
  );
  return conf;
}

/**
 * Starts the balancer `kind` on a free port in front of the servers on
 * `ports`. `requests()` lists the requests it has logged (a request is
 * logged once it is over; a WebSocket when it closes) as
 * `{ server, method, url, status }`, `server` being the index in `ports`.
 */
export async function startBalancer(kind, ports) {
  const dir = await mkdtemp(join(tmpdir(), `tidings-${kind}-`));
  // nginx's workers drop root for `nobody`, which must reach the directory.
  await chmod(dir, 0o755);
  const port = await freePort();
  const config = join(dir, kind === "haproxy" ? "haproxy.cfg" : "nginx.conf");
  await writeFile(config, await renderConfig(kind, { port, ports, dir }));
  const args =
    kind === "haproxy"
      ? ["-f", config, "-db"]
      : ["-p", `${dir}/`, "-c", config, "-e", "stderr", "-g", `daemon off; pid ${join(dir, "nginx.pid")};`];
  const child = spawn(program(kind), args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  let gone = false;
  exited.then(() => (gone = true));
  const url = `http://127.0.0.1:${port}`;
  // Up once it answers through to a server.
  await until(
    async () => {
      if (gone) throw new Error(`${kind} exited: ${stderr}${stdout}`);
      return fetch(`${url}/healthz`).then(
        (res) => res.ok,
        () => false,
      );
    },
    `${kind} to start`,
    15000,
  );
  const index = (address) => ports.indexOf(Number(address.split(":").pop()));
  const parse = {
    // `option httplog`: … frontend backend/server timers status … "request line"
    haproxy: (line) => {
      const m = line.match(/ \S+\/tidings(\d+) \S+ (\d+) .*"(\S+) (\S+) HTTP/);
      return m && { server: Number(m[1]) - 1, status: Number(m[2]), method: m[3], url: m[4] };
    },
    // log_format upstream: $remote_addr "$request" $status upstream=$upstream_addr
    nginx: (line) => {
      const m = line.match(/"(\S+) (\S+) HTTP\/[\d.]+" (\d+) upstream=(\S+)$/);
      return m && { server: index(m[4]), status: Number(m[3]), method: m[1], url: m[2] };
    },
  }[kind];
  return {
    kind,
    url,
    port,
    async requests() {
      const text = kind === "haproxy" ? stdout : await readFile(join(dir, "access.log"), "utf8").catch(() => "");
      return text.split("\n").map(parse).filter(Boolean);
    },
    output: () => stdout + stderr,
    async stop() {
      if (!gone) {
        // SIGTERM, not SIGKILL: nginx's master stops its workers on the
        // way out, while a killed master leaves them serving.
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * `n` tidings servers (with `args`) on a redis-server of their own, behind
 * the balancer `kind`. `servers[i]` is the handle of server `i` while it
 * runs; `stop(i, signal)` ends it (SIGKILL: a crash; SIGTERM: a graceful
 * shutdown) and `start(i)` starts it again on the same port, which the
 * balancer still sends requests to.
 */
export async function startBalancedCluster(kind, { n = 3, args = [] } = {}) {
  const redis = await startRedis();
  const prefix = `t${Math.random().toString(36).slice(2, 10)}.`;
  const serverArgs = ["--redis", redis.url, "--redis-prefix", prefix, ...args];
  const servers = await Promise.all(Array.from({ length: n }, () => startServer(serverArgs)));
  const ports = servers.map((s) => s.port);
  let balancer;
  try {
    balancer = await startBalancer(kind, ports);
  } catch (error) {
    await Promise.all(servers.map((s) => s.stop()));
    await redis.stop();
    throw error;
  }
  return {
    kind,
    url: balancer.url,
    balancer,
    redis,
    servers,
    ports,
    /** The requests the balancer has logged since `from` of them. */
    async requests(from = 0) {
      return (await balancer.requests()).slice(from);
    },
    async stop(i, signal = "SIGKILL") {
      const { child, exited } = servers[i];
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    async start(i) {
      servers[i] = await startServer([...serverArgs, "--listen", `127.0.0.1:${ports[i]}`]);
      return servers[i];
    },
    async restart(i, signal = "SIGKILL") {
      await this.stop(i, signal);
      return this.start(i);
    },
    async close() {
      await balancer.stop();
      await Promise.all(servers.map((s) => s.stop()));
      await redis.stop();
    },
  };
}
