// The browser chat app (imd --web) in Debian's Chromium, driven by
// puppeteer-core: two users in two browser contexts chat 1:1 and in a
// group, one goes offline and finds what it missed, and the node restarts
// mid-conversation. On failure each page's screenshot is saved under
// test-artifacts/browser/ at the repository root (ARTIFACTS_DIR to change).
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import puppeteer from "puppeteer-core";
import { startImd } from "../imd.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const artifacts = process.env.ARTIFACTS_DIR ?? path.join(root, "test-artifacts/browser");
const chromium = process.env.CHROMIUM_BIN ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
const T = 15_000;

let browser, profile, node;
const pages = {};

before(async () => {
  assert.ok(chromium, "Debian's chromium is installed (make test-browser installs it)");
  profile = mkdtempSync(path.join(tmpdir(), "imgn-chromium-"));
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: false, // --headless is passed below, with the other flags
    userDataDir: profile,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--window-size=1100,720"],
    defaultViewport: { width: 1100, height: 720 },
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function screenshots(name) {
  mkdirSync(artifacts, { recursive: true });
  for (const [who, p] of Object.entries(pages)) {
    if (!p.isClosed()) await p.screenshot({ path: path.join(artifacts, `${name}-${who}.png`) }).catch(() => undefined);
  }
}

/** step runs one part of the scenario, saving screenshots when it fails. */
async function step(name, fn) {
  try {
    await fn();
  } catch (e) {
    await screenshots(name.replace(/\W+/g, "-"));
    throw e;
  }
}

async function openApp(ctx, who) {
  const p = await ctx.newPage();
  p.on("pageerror", (e) => console.error(`[${who}] page error:`, e.message));
  p.on("console", (m) => process.env.BROWSER_CONSOLE && console.error(`[${who}] console:`, m.text()));
  await p.goto(node.http, { waitUntil: "load" });
  pages[who] = p;
  return p;
}

async function signIn(p, user, register) {
  await p.type("#login-user", user);
  await p.type("#login-password", "secret123");
  await p.click(register ? "#register-button" : "#login-button");
  await p.waitForSelector("#chat-view:not([hidden])", { timeout: T });
}

const hasMessage = (p, text, extra = "") => p.waitForFunction((t, x) =>
  [...document.querySelectorAll("#messages .msg" + x)].some((e) => e.querySelector(".text")?.textContent === t),
{ timeout: T }, text, extra);

const statusOf = (p, text) => p.evaluate((t) => {
  const m = [...document.querySelectorAll("#messages .msg")].find((e) => e.querySelector(".text")?.textContent === t);
  return m?.querySelector(".status")?.textContent ?? "";
}, text);

/** waitStatus waits until a message's status ends with want, or with one of want's entries. */
const waitStatus = (p, text, want) => p.waitForFunction((t, ws) => {
  const m = [...document.querySelectorAll("#messages .msg")].find((e) => e.querySelector(".text")?.textContent === t);
  const st = m?.querySelector(".status")?.textContent;
  return st !== undefined && ws.some((w) => st.endsWith(w));
}, { timeout: T }, text, [want].flat());

const badge = (p, key) => p.evaluate((k) => document.querySelector(`.conv[data-conv="${k}"] .badge`)?.textContent ?? "", key);

/** open clicks a conversation in the list, again if a redraw replaced it under the pointer. */
async function open(p, key) {
  for (let i = 0; ; i++) {
    try {
      await p.click(`.conv[data-conv="${key}"]`);
      await p.waitForSelector(`.conv[data-conv="${key}"][aria-current="true"]`, { timeout: 2000 });
      return;
    } catch (e) {
      if (i === 3) throw e;
    }
  }
}

async function say(p, text) {
  await p.type("#composer-input", text);
  await p.keyboard.press("Enter");
}

async function twoUsers(store) {
  node = await startImd({ store, web: true });
  const tag = process.pid.toString(36) + store[0];
  const alice = "alice" + tag, bob = "bob" + tag;
  const ctxA = await browser.createBrowserContext();
  const ctxB = await browser.createBrowserContext();
  const A = await openApp(ctxA, "alice");
  const B = await openApp(ctxB, "bob");
  await step("register", async () => {
    await signIn(A, alice, true);
    await signIn(B, bob, true);
  });
  return { alice, bob, A, B, ctxA, ctxB, done: async () => {
    await ctxA.close();
    await ctxB.close();
    await node.close();
  } };
}

const waitBadge = (p, key, n) => p.waitForFunction((k, want) =>
  (document.querySelector(`.conv[data-conv="${k}"] .badge`)?.textContent ?? "") === want, { timeout: T }, key, n);

/** createGroup creates a group through the sidebar form (invite-only unless open) and returns its conversation key. */
async function createGroup(A, members, name = "team", openGroup = false) {
  await A.click("details.mini summary");
  await A.type("#new-group-name", name);
  if (members) await A.type("#new-group-members", members);
  if (openGroup) await A.click("#new-group-open");
  await A.click("#new-group-form button");
  await A.waitForFunction((n) => document.querySelector("#chat-title").textContent === n, { timeout: T }, name);
  return A.evaluate(() => document.querySelector('.conv[aria-current="true"]').dataset.conv);
}

const hasNotice = (p, text) => p.waitForFunction((t) =>
  [...document.querySelectorAll("#messages .msg.notice")].some((e) => e.textContent === t), { timeout: T }, text);

const waitConvName = (p, key, name) => p.waitForFunction((k, n) =>
  document.querySelector(`.conv[data-conv="${k}"] .name`)?.firstChild?.textContent === n, { timeout: T }, key, name);

test("memory store: 1:1 with unread counts from CONVERSATIONS, read receipts, typing, presence, groups", { timeout: 60_000 }, async () => {
  const { alice, bob, A, B, done } = await twoUsers("memory");
  await step("one-to-one", async () => {
    await A.type("#new-chat-user", bob);
    await A.keyboard.press("Enter");
    await say(A, "hello bob");
    await waitStatus(A, "hello bob", "sent");
    // bob sees the conversation with one unread message, opens it, and alice sees it read
    await waitBadge(B, "u:" + alice, "1");
    assert.equal(await B.evaluate(() => document.body.dataset.unread), "server");
    await open(B, `u:${alice}`);
    await hasMessage(B, "hello bob");
    assert.equal(await badge(B, "u:" + alice), "");
    await waitStatus(A, "hello bob", "read");
    await B.type("#composer-input", "hi al");
    await A.waitForFunction((u) => document.querySelector("#typing").textContent === `${u} is typing…`, { timeout: T }, bob);
    await B.type("#composer-input", "ice");
    await B.keyboard.press("Enter");
    await hasMessage(A, "hi alice");
    await A.waitForSelector("#chat-presence.online", { timeout: T });
  });
  let groupKey;
  await step("invite-only group", async () => {
    groupKey = await createGroup(A, ""); // invite-only by default, alice alone
    assert.match(await A.$eval("#chat-sub", (e) => e.textContent), /^invite-only · owner you · 1 member · id /);
    await A.click("#group-summary");
    await A.type("#group-add-users", bob);
    await A.click("#group-add-form button");
    await A.waitForSelector(`#group-members li[data-member="${bob}"]`, { timeout: T });
    await hasNotice(A, `You added ${bob}`);
    // bob: the group in his list with its name, one unread (the notice), and the notice in the timeline
    await waitBadge(B, groupKey, "1");
    await waitConvName(B, groupKey, "team");
    await open(B, groupKey);
    await hasNotice(B, `${alice} added you`);
    assert.equal(await B.$$eval("#messages .msg:not(.notice)", (l) => l.length), 0); // a notice, not a chat bubble
    await B.waitForFunction((a) => document.querySelector("#chat-sub").textContent.startsWith(`invite-only · owner ${a} · 2 members`),
      { timeout: T }, alice);
    await B.click("#group-summary");
    await B.waitForSelector(`#group-members li[data-member="${alice}"] .role`, { timeout: T });
    assert.equal(await B.$eval("#group-add-form", (f) => f.hidden), true); // a plain member adds nobody
    await say(A, "hi team");
    await hasMessage(B, "hi team");
    await say(B, "hey all");
    await hasMessage(A, "hey all");
  });
  await step("outsider refused", async () => {
    const ctxC = await browser.createBrowserContext();
    const C = await openApp(ctxC, "carol");
    await signIn(C, "carol" + process.pid.toString(36), true);
    await C.click("details.mini summary");
    await C.type("#join-group-id", groupKey.slice(2));
    await C.click("#join-group-form button");
    await C.waitForFunction(() => document.querySelector("#side-error").textContent.includes("invite-only"), { timeout: T });
    assert.equal(await C.$eval("#side-error", (e) => e.textContent), "This group is invite-only: ask its owner or an admin to add you.");
    assert.equal(await C.$(`.conv[data-conv="${groupKey}"]`), null);
    await ctxC.close();
    delete pages.carol;
  });
  mkdirSync(artifacts, { recursive: true });
  await A.screenshot({ path: path.join(artifacts, "group.png") });
  await step("removed", async () => {
    await A.click(`#group-members li[data-member="${bob}"] button`); // "Remove"
    await hasNotice(B, `${alice} removed you`);
    await B.waitForSelector("#composer[hidden]", { timeout: T });
    await A.waitForFunction((b) => !document.querySelector(`#group-members li[data-member="${b}"]`), { timeout: T }, bob);
  });
  await open(A, `u:${bob}`);
  await A.screenshot({ path: path.join(artifacts, "chat.png") });
  await done();
});

test("embedded store: offline catch-up with unread counts from CONVERSATIONS, groups from GROUPS, node restart mid-conversation", { timeout: 60_000 }, async () => {
  const { alice, bob, ctxA, ctxB, done } = await twoUsers("embedded");
  let A = pages.alice;
  let { B } = { B: pages.bob };
  let groupKey, quiet;
  await step("before", async () => {
    await A.type("#new-chat-user", bob);
    await A.keyboard.press("Enter");
    await say(A, "hello bob");
    await waitBadge(B, "u:" + alice, "1");
    assert.equal(await B.evaluate(() => document.body.dataset.unread), "server"); // the embedded store keeps conversations
    groupKey = await createGroup(A, bob);
    assert.match(await A.$eval("#chat-sub", (e) => e.textContent), /^invite-only · owner you · 2 members · id /);
    await say(A, "hi team");
    await waitBadge(B, groupKey, "2"); // "alice added you", then the message
  });
  await step("offline", async () => {
    await B.close(); // bob goes offline
    await open(A, `u:${bob}`);
    await A.waitForSelector("#chat-presence:not(.online)", { timeout: T });
    await say(A, "while you were away");
    await waitStatus(A, "while you were away", "sent");
    await open(A, groupKey);
    await say(A, "group news");
    await waitStatus(A, "group news", "sent");
    // a group bob is put in while away, with no message in it: only the notice of his addition
    quiet = await createGroup(A, bob, "quiet");
    B = await openApp(ctxB, "bob");
    await signIn(B, bob, false);
    await waitBadge(B, "u:" + alice, "2");
    await waitBadge(B, groupKey, "3");
    await waitConvName(B, quiet, "quiet");
    // bob leaves it: the notice on both sides, and no composer for him
    await open(B, quiet);
    await B.click("#group-summary");
    await B.click("#group-leave");
    await hasNotice(B, "You left");
    await B.waitForSelector("#composer[hidden]", { timeout: T });
    await open(A, quiet);
    await hasNotice(A, `${bob} left`);
    await A.waitForFunction(() => document.querySelector("#chat-sub").textContent.startsWith("invite-only · owner you · 1 member ·"), { timeout: T });
    await open(B, groupKey);
    await hasMessage(B, "group news");
    await open(B, `u:${alice}`);
    await hasMessage(B, "while you were away");
    await hasMessage(B, "hello bob");
    assert.equal(await badge(B, "u:" + alice), "");
  });
  await step("restart", async () => {
    await open(A, `u:${bob}`);
    await node.stop(); // GO_AWAY, then the node is gone
    await A.waitForSelector("#banner:not([hidden])", { timeout: T });
    await B.waitForSelector("#banner:not([hidden])", { timeout: T });
    await say(A, "sent during the restart");
    await hasMessage(A, "sent during the restart");
    assert.match(await statusOf(A, "sent during the restart"), /sending…|retrying…/);
    await node.start();
    await A.waitForSelector("#banner[hidden]", { timeout: T });
    await B.waitForSelector("#banner[hidden]", { timeout: T });
    await waitStatus(A, "sent during the restart", ["sent", "read"]); // bob has the chat open: read at once
    await hasMessage(B, "sent during the restart");
    await say(B, "back again");
    await hasMessage(A, "back again");
    const texts = await B.evaluate(() => [...document.querySelectorAll("#messages .msg .text")].map((e) => e.textContent));
    assert.deepEqual(texts, ["hello bob", "while you were away", "sent during the restart", "back again"]); // each once, in order
  });
  await step("reload", async () => {
    // a message typed while the node is down survives closing the page (the outbox in localStorage)
    await node.stop();
    await A.waitForSelector("#banner:not([hidden])", { timeout: T });
    await say(A, "kept across a reload");
    await hasMessage(A, "kept across a reload");
    await A.close();
    await node.start();
    A = await openApp(ctxA, "alice");
    await signIn(A, alice, false);
    await open(A, `u:${bob}`);
    await waitStatus(A, "kept across a reload", ["sent", "read"]);
    await hasMessage(B, "kept across a reload");
    const texts = await B.evaluate(() => [...document.querySelectorAll("#messages .msg .text")].map((e) => e.textContent));
    assert.equal(texts.filter((t) => t === "kept across a reload").length, 1);
  });
  await done();
});
