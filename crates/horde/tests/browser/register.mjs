// Registers through /register in a real browser (Debian's chromium, through playwright-core),
// with JavaScript off as the page promises: the form, the cookie and the token as a browser
// handles them, and the key page. Run by crates/horde/tests/api/register.rs
// (`a_real_browser_registers_without_javascript`), which starts the coordinator.
//
// Environment: HORDE_URL (the coordinator), CHROMIUM (default /usr/bin/chromium). Prints
// "key: <the key>" and "register checks passed"; exits non-zero with the reason on failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.HORDE_URL;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  const opened = await page.goto(`${url}/register`);
  assert.equal(opened.status(), 200);
  await page.fill("#username", "browser user");
  const [answer] = await Promise.all([
    page.waitForNavigation(),
    page.click("button[type=submit]"),
  ]);
  assert.equal(answer.status(), 201, await page.content());
  const text = await page.textContent("main");
  assert.ok(text.includes("Store it now"), text);
  const alias = await page.textContent("#alias");
  assert.match(alias, /^browser user#\d+$/);
  const key = await page.textContent("#api-key");
  assert.equal(key.length, 22);
  console.log(`key: ${key}`);
} finally {
  await browser.close();
}
console.log("register checks passed");
