// Starts real imd (and imrouter) processes on free loopback ports for the
// tests, and stops them. The binaries come from `make build` (../../bin),
// or IMD_BIN / IMROUTER_BIN.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const IMD = process.env.IMD_BIN ?? path.join(root, "bin/imd");
export const IMROUTER = process.env.IMROUTER_BIN ?? path.join(root, "bin/imrouter");

/** freePort returns a loopback port that was free a moment ago. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitHTTP(url, deadlineMs, proc) {
  const until = Date.now() + deadlineMs;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${url}: process exited with ${proc.exitCode}:\n${proc.logs()}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`${url} not ready within ${deadlineMs} ms:\n${proc.logs()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function launch(bin, args) {
  const p = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const keep = (d) => {
    out += d.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  p.stdout.on("data", keep);
  p.stderr.on("data", keep);
  p.logs = () => out;
  return p;
}

function stopProc(p, signal = "SIGTERM") {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
    p.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
    p.kill(signal);
  });
}

/**
 * startImd runs one node. opts: store ("memory" | "embedded"), web (serve
 * the browser app), args (more flags). The node keeps its ports and data
 * directory across restart(), so clients can reconnect to the same URL.
 */
export async function startImd(opts = {}) {
  const [port, wsPort, adminPort] = [await freePort(), await freePort(), await freePort()];
  const dataDir = mkdtempSync(path.join(tmpdir(), "imgn-js-"));
  const args = [
    "--listen", `127.0.0.1:${port}`, "--ws-listen", `127.0.0.1:${wsPort}`, "--admin", `127.0.0.1:${adminPort}`,
    "--node-id", opts.nodeId ?? `n${port}`, "--store", opts.store ?? "memory", "--data", dataDir,
    "--login-rate-per-ip", "-1", "--goaway-window", "200ms", "--shutdown-timeout", "3s", "--log-level", "warn",
    ...(opts.web ? ["--web"] : []), ...(opts.args ?? []),
  ];
  const node = {
    port, wsPort, adminPort, dataDir,
    addr: `127.0.0.1:${port}`,
    url: `ws://127.0.0.1:${wsPort}/`,
    http: `http://127.0.0.1:${wsPort}/`,
    proc: undefined,
    async start() {
      this.proc = launch(IMD, args);
      await waitHTTP(`http://127.0.0.1:${adminPort}/readyz`, 20_000, this.proc);
    },
    /** stop ends the node: SIGTERM (GO_AWAY to clients) or, with kill, SIGKILL. */
    async stop(kill = false) {
      await stopProc(this.proc, kill ? "SIGKILL" : "SIGTERM");
    },
    async restart(kill = false) {
      await this.stop(kill);
      await this.start();
    },
    async close() {
      await this.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
    logs() {
      return this.proc?.logs() ?? "";
    },
  };
  await node.start();
  return node;
}

/** startRouter runs imrouter with a fixed membership ("id=host:port,..."). */
export async function startRouter(staticMembers) {
  const port = await freePort();
  const proc = launch(IMROUTER, ["--listen", `127.0.0.1:${port}`, "--static", staticMembers, "--log-level", "warn"]);
  await waitHTTP(`http://127.0.0.1:${port}/readyz`, 20_000, proc);
  return { url: `http://127.0.0.1:${port}`, close: () => stopProc(proc) };
}

/** until polls cond every 20 ms until it is truthy or ms pass. */
export async function until(cond, ms = 10_000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
