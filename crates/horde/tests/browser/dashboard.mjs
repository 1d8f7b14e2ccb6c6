// Drives the dashboard in a real browser (Debian's chromium, through playwright-core), as a
// person would. Run by crates/horde/tests/api/browser.rs, which starts the coordinator; when
// this prints "page-ready" it starts the real worker on a tiny checkpoint, and when this
// prints "restart-please" it restarts the coordinator on the same port and queues a request
// no worker can take.
//
// Environment: HORDE_URL (the coordinator), HORDE_API_KEY (a moderator who owns the worker and
// has kudos), HORDE_SHADY_WORKER (the name of an online worker with suspicion), SCREENSHOTS (a
// directory), CHROMIUM (default /usr/bin/chromium). Exits non-zero with the reason on failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const url = process.env.HORDE_URL;
const key = process.env.HORDE_API_KEY;
const shady = process.env.HORDE_SHADY_WORKER;
const shots = process.env.SCREENSHOTS;
const step = (what) => console.log(`step: ${what}`);
const shot = (page, name) => page.screenshot({ path: path.join(shots, name), fullPage: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  await withScript(browser);
  await withoutScript(browser);
} finally {
  await browser.close();
}
console.log("browser checks passed");

async function withScript(browser) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.status()} from ${r.url()}`));
  // Every call the page makes to a request's check, status or stream: the form follows its
  // request over the stream, never by polling.
  const followed = [];
  page.on("request", (r) => /\/api\/v2\/generate\/(check|status|stream)\//.test(r.url()) &&
    followed.push(new URL(r.url()).pathname));

  // First load: everything the page needs, counted as transferred (headers and bodies), no
  // request to anywhere but the coordinator. The event stream stays open, so it is left out.
  const loaded = [];
  page.on("requestfinished", async (request) => {
    const sizes = await request.sizes();
    loaded.push({ url: request.url(), bytes: sizes.responseBodySize + sizes.responseHeadersSize });
  });
  await page.goto(url + "/", { waitUntil: "load" });
  await page.waitForTimeout(300);
  const firstLoad = loaded.reduce((sum, r) => sum + r.bytes, 0);
  console.log(`first load: ${loaded.length} responses, ${firstLoad} bytes`);
  assert.ok(firstLoad < 200 * 1024, `first load ${firstLoad} bytes`);
  for (const r of loaded) assert.ok(r.url.startsWith(url), `an outside request: ${r.url}`);
  assert.equal(await page.textContent("#workers-online"), "1", "only the shady worker is online");
  assert.equal(await page.textContent("#images-hour"), "0");

  step("the worker appears without a reload");
  console.log("page-ready");
  await page.waitForFunction(() => document.getElementById("workers-online").textContent === "2",
    null, { timeout: 60_000 });
  await page.locator("#tables td", { hasText: "tiny-worker" }).first().waitFor({ timeout: 15_000 });
  await shot(page, "1-worker-online.png");

  step("the API key, entered with the keyboard alone");
  let reached = false;
  for (let i = 0; i < 60 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement && document.activeElement.id === "apikey");
  }
  assert.ok(reached, "Tab never reached the API key field");
  await page.keyboard.type(key);
  await page.keyboard.press("Enter");
  await page.locator("#account-view").waitFor({ state: "visible" });
  assert.match(await page.textContent("#my-name"), /^dash-moderator/);
  assert.equal(await page.textContent("#my-kudos"), "100");
  assert.equal(await page.evaluate(() => localStorage.getItem("horde-api-key")), key);
  await page.locator("#my-workers td", { hasText: "tiny-worker" }).waitFor();

  step("a generation from the form shows its image");
  await page.fill("#gen-prompt", "a lighthouse in a browser");
  await page.waitForFunction(() => [...document.querySelectorAll("#gen-model option")]
    .some((o) => o.value === "stable_diffusion"));
  await page.selectOption("#gen-model", "stable_diffusion");
  for (const [field, value] of [["#gen-width", "64"], ["#gen-height", "64"], ["#gen-steps", "2"]]) {
    await page.fill(field, value);
  }
  await page.click("#generate-form button[type=submit]");
  const image = page.locator("#generated img").first();
  await image.waitFor({ timeout: 90_000 });
  await page.waitForFunction(() => {
    const img = document.querySelector("#generated img");
    return img && img.complete && img.naturalWidth > 0;
  });
  const size = await image.evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [64, 64], "the image decoded at the requested size");
  assert.match(await image.getAttribute("alt"), /tiny-worker/);
  await page.waitForFunction(() => document.getElementById("generate-status").textContent.startsWith("Done"));
  assert.match(await page.textContent("#generate-status"), /^Done: 1 image\(s\)\.$/);
  assert.equal(await page.locator("#generated img").count(), 1, "the image shown once");
  console.log(`followed by: ${followed.join(" ")}`);
  assert.ok(followed.length >= 1, "the form followed its request");
  for (const p of followed) {
    assert.match(p, /^\/api\/v2\/generate\/stream\/[0-9a-f-]{36}$/, "a stream, no polling of check or status");
  }

  step("the counters move");
  await page.waitForFunction(() => document.getElementById("images-hour").textContent === "1",
    null, { timeout: 15_000 });
  await page.waitForFunction(() => {
    const chart = document.getElementById("throughput");
    return chart && chart.getAttribute("data-images") === "1";
  }, null, { timeout: 15_000 });
  await page.locator("#my-ledger td", { hasText: "spend" }).first().waitFor();
  await page.waitForFunction(() => document.getElementById("my-images").textContent === "1");
  await shot(page, "2-generated.png");

  step("maintenance toggled from the owner's table");
  const maintenance = page.getByLabel("Maintenance of tiny-worker");
  await maintenance.focus();
  await page.keyboard.press("Space");
  await expectWorker(page, "tiny-worker", (w) => w.maintenance_mode === true);
  await page.keyboard.press("Space");
  await expectWorker(page, "tiny-worker", (w) => w.maintenance_mode === false);

  step("a moderator clears a suspicious worker");
  const row = page.locator("#suspicious tr", { hasText: shady });
  await row.waitFor();
  await shot(page, "3-moderation.png");
  await row.getByRole("button", { name: "Flag owner" }).click();
  await row.getByRole("button", { name: "Owner flagged" }).waitFor();
  await page.locator("#suspicious tr", { hasText: shady }).getByRole("button", { name: "Clear suspicion" }).click();
  await page.locator("#suspicious td", { hasText: "No online worker is suspicious." }).waitFor();
  await expectWorker(page, shady, (w) => w.reputation.suspicion === 0);

  step("the page reconnects after a coordinator restart");
  assert.equal(await page.textContent("#queued-requests"), "0");
  console.log("restart-please"); // the coordinator restarts, then a request waits in it
  await page.waitForFunction(() => document.getElementById("queued-requests").textContent === "1",
    null, { timeout: 60_000 });
  await shot(page, "4-after-restart.png");

  step("a model's page, from the models table");
  await page.locator("#tables").getByRole("link", { name: "stable_diffusion" }).click();
  await page.waitForURL(/\/models\/stable_diffusion$/);
  assert.equal(await page.textContent("h1"), "stable_diffusion");
  await page.locator("td", { hasText: "tiny-worker" }).first().waitFor();

  assert.deepEqual(errors, [], "no script error");
  await page.close();
}

// The read-only tables, sorted and filtered by links and a form, with scripts off.
async function withoutScript(browser) {
  step("the tables without JavaScript");
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(url + "/");
  await page.fill("#q", "tiny");
  await page.press("#q", "Enter");
  await page.waitForURL(/q=tiny/);
  const rows = page.locator("#workers ~ table tbody tr");
  assert.equal(await rows.count(), 1);
  assert.match(await rows.first().textContent(), /tiny-worker/);
  await page.getByRole("link", { name: "Jobs done" }).click();
  await page.waitForURL(/sort=jobs/);
  assert.match(await page.locator("#workers ~ table tbody tr").first().textContent(), /tiny-worker/);
  assert.ok(await page.locator("noscript").count() > 0);
  await shot(page, "5-without-javascript.png");
  await context.close();
}

// Polls the API (as the page's user) until `name` satisfies `test`.
async function expectWorker(page, name, test) {
  for (let i = 0; i < 50; i++) {
    const worker = await page.evaluate(async ([name, key]) => {
      const r = await fetch("/api/v2/workers/name/" + encodeURIComponent(name), { headers: { apikey: key } });
      return r.json();
    }, [name, key]);
    if (test(worker)) return;
    await page.waitForTimeout(100);
  }
  throw new Error(`worker ${name} never reached the expected state`);
}
