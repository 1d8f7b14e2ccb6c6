// The account page's tier, quota and keys in a real browser (Debian's chromium, through
// playwright-core), as a moderator uses them: the tier and daily quota shown; another user
// moved into an operator tier; a shared key created, edited, and another deleted; the
// moderator's own key rotated. Every change asks for confirmation: each dialog is checked, and
// a dismissed one changes nothing. Run by crates/horde/tests/api/browser.rs
// (`the_account_page_manages_tiers_and_keys`), which starts the coordinator and checks the
// results through the API.
//
// Environment: HORDE_URL, HORDE_API_KEY (a moderator's), HORDE_USER_ID (a registered user to
// move into the tier "gold"), CHROMIUM (default /usr/bin/chromium). Prints "shared: <key>",
// "deleted: <key>", "rotated: <key>" and "keys checks passed"; exits non-zero on failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.HORDE_URL;
const key = process.env.HORDE_API_KEY;
const userId = process.env.HORDE_USER_ID;
const step = (what) => console.log(`step: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // The next dialog is accepted unless `dismissNext` is set; each one's text is kept.
  const dialogs = [];
  let dismissNext = false;
  page.on("dialog", async (dialog) => {
    dialogs.push(dialog.message());
    if (dismissNext) {
      dismissNext = false;
      await dialog.dismiss();
    } else {
      await dialog.accept();
    }
  });
  const lastDialog = () => dialogs[dialogs.length - 1] || "";
  const asUser = (path) => page.evaluate(async ([path, key]) => {
    const r = await fetch("/api/v2" + path, { headers: { apikey: key } });
    return r.json();
  }, [path, key]);

  step("the account shows its tier and daily quota");
  await page.goto(url + "/");
  await page.fill("#apikey", key);
  await page.press("#apikey", "Enter");
  await page.locator("#account-view").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#my-tier"), "trusted");
  await page.locator("#my-quota tbody tr").nth(3).waitFor();
  assert.match(await page.textContent("#my-quota"), /Images\s*0\s*no limit/);
  assert.match(await page.textContent("#quota-reset"), /starts again at .* \(in \d+ min\)/);

  step("a moderator moves a user into the tier gold, after a confirmation");
  await page.fill("#tier-user", userId);
  await page.click("#tier-form button[type=submit]");
  await page.locator("#tier-move").waitFor({ state: "visible" });
  assert.match(await page.textContent("#tier-current"), /is in the tier registered\.$/);
  await page.selectOption("#tier-select", "gold");
  dismissNext = true;
  await page.click("#tier-apply");
  await page.waitForTimeout(300);
  assert.match(lastDialog(), /^Move .*#\d+ to the tier gold\?$/);
  assert.equal((await asUser("/users/" + userId)).daily_quota.tier, "registered", "a dismissed move changed the tier");
  await page.click("#tier-apply");
  await page.locator("#tier-status", { hasText: "is now in the tier gold." }).waitFor();
  assert.equal((await asUser("/users/" + userId)).daily_quota.tier, "gold");

  step("a shared key is created and shown once");
  const create = async (name, kudos, days) => {
    await page.fill("#sk-name", name);
    await page.fill("#sk-kudos", String(kudos));
    await page.fill("#sk-expiry", String(days));
    await page.click("#sk-submit");
    await page.locator("#sharedkey-status", { hasText: `Created the shared key ${name}.` }).waitFor();
    assert.equal(lastDialog(), `Create the shared key ${name}?`);
    await page.locator("#my-sharedkeys tr", { hasText: name }).waitFor();
    return (await page.textContent("#sharedkey-value")).trim();
  };
  const shared = await create("for a friend", 50, 7);
  assert.match(shared, /^[0-9a-f-]{36}$/);
  assert.ok(await page.isVisible("#sharedkey-new"));

  step("it is edited");
  await page.getByRole("button", { name: "Edit for a friend" }).click();
  assert.equal(await page.inputValue("#sk-kudos"), "50");
  assert.equal(await page.inputValue("#sk-expiry"), "7");
  await page.fill("#sk-name", "for my friend");
  await page.fill("#sk-kudos", "75");
  await page.click("#sk-submit");
  await page.locator("#sharedkey-status", { hasText: "Saved the shared key for my friend." }).waitFor();
  assert.equal(lastDialog(), "Save the changes to the shared key for a friend?");
  const row = page.locator("#my-sharedkeys tr", { hasText: "for my friend" });
  await row.waitFor();
  assert.match(await row.textContent(), /for my friend\s*75/);

  step("another is deleted, once the dismissed confirmation is asked again");
  const doomed = await create("short-lived", 10, 1);
  dismissNext = true;
  await page.getByRole("button", { name: "Delete short-lived" }).click();
  await page.waitForTimeout(300);
  assert.equal(lastDialog(), "Delete the shared key short-lived? It stops working at once.");
  assert.equal(await page.locator("#my-sharedkeys tr", { hasText: "short-lived" }).count(), 1);
  await page.getByRole("button", { name: "Delete short-lived" }).click();
  await page.locator("#sharedkey-status", { hasText: "Deleted the shared key short-lived." }).waitFor();
  await page.locator("#my-sharedkeys tr", { hasText: "short-lived" }).waitFor({ state: "detached" });
  assert.equal(await page.locator("#my-sharedkeys tbody tr").count(), 1);

  step("the key is rotated: the new one shown once and used by this browser");
  dismissNext = true;
  await page.click("#rotate-key");
  await page.waitForTimeout(300);
  assert.ok(await page.isHidden("#rotated"), "a dismissed rotation rotated");
  await page.click("#rotate-key");
  await page.locator("#rotated").waitFor({ state: "visible" });
  assert.match(lastDialog(), /^Rotate your API key\?/);
  const rotated = (await page.textContent("#new-key")).trim();
  assert.equal(rotated.length, 22);
  assert.notEqual(rotated, key);
  assert.equal(await page.evaluate(() => localStorage.getItem("horde-api-key")), rotated);
  await page.reload();
  await page.locator("#account-view").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#my-tier"), "trusted");
  assert.ok(await page.isHidden("#rotated"), "the new key is shown once");

  console.log(`shared: ${shared}`);
  console.log(`deleted: ${doomed}`);
  console.log(`rotated: ${rotated}`);
  assert.deepEqual(errors, [], "no script error");
} finally {
  await browser.close();
}
console.log("keys checks passed");
