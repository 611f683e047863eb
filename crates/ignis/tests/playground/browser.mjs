// The playground in a real browser: Debian's chromium driven by
// playwright-core, against real `ignis serve`s with real VMs.
//
//   node browser.mjs <dev base URL> <keyed base URL> <API key> <artefact dir>
//
// Exits non-zero naming the first scenario that did not hold; writes
// screenshots into the artefact directory and prints their paths.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [devBase, keyBase, goodKey, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: browser.mjs <dev base> <keyed base> <key> <artefact dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

// Runs end in VMs booted on demand on a busy host: waits are generous.
const WAIT = 180_000;
const profile = mkdtempSync(join(tmpdir(), "ignis-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 900 },
});

const problems = [];
let page;

function watchPage(p, base) {
  p.setDefaultTimeout(WAIT);
  p.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  p.on("console", (m) => {
    const text = m.text();
    // A refused request shows as a console error; the page must say why itself.
    if (m.type() === "error" && !/status of 40[19]/.test(text)) problems.push(`console: ${text}`);
  });
  p.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("data:")) {
      problems.push(`request outside the server: ${r.url()}`);
    }
  });
}

async function newPage(base) {
  const p = await context.newPage();
  watchPage(p, base);
  await p.goto(`${base}/`);
  return p;
}

let current = "start";
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(`ok: ${name} (${Date.now() - t0} ms)`);
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const text = (sel) => page.locator(sel).innerText();

// Types `code` into the editor as a paste would, then checks it arrived.
async function setCode(code) {
  await page.locator("#editor .cm-content").click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(code);
  const got = await page.evaluate(() => editor.getCode());
  check(got === code, `the editor holds ${JSON.stringify(got)}, not the code typed`);
}

async function selectLanguage(lang) {
  await page.locator(`#language option[value="${lang}"]`).waitFor({ state: "attached" });
  await page.selectOption("#language", lang);
}

async function waitStatus(status) {
  await page.locator(`#status[data-status="${status}"]`).waitFor();
}

async function runAndWait(how = "button") {
  if (how === "keys") {
    await page.locator("#editor .cm-content").click();
    await page.keyboard.press("Control+Enter");
  } else {
    await page.click("#run");
  }
  await page.locator("#status:not([data-status='']):not([data-status='submitting'])"
    + ":not([data-status='queued']):not([data-status='running'])").waitFor();
  return { status: await page.getAttribute("#status", "data-status"), id: await text("#job-id") };
}

const jobs = {};

try {
  page = await newPage(devBase);

  await step("the page loads the languages and an editor with highlighting (--dev, no key)", async () => {
    await selectLanguage("python");
    await selectLanguage("go");
    check(await page.locator("#error").isHidden(), `an error is shown: ${await text("#error")}`);
    // A highlighted sample: the Go keywords sit in spans of their own.
    await page.locator("#editor .cm-line span").first().waitFor();
  });

  await step("Python hello world, run with Ctrl+Enter", async () => {
    await selectLanguage("python");
    await setCode('print("hello from python")\n');
    const r = await runAndWait("keys");
    check(r.status === "completed", `status ${r.status}`);
    check(await text("#verdict") === "ok", `verdict ${await text("#verdict")}`);
    check((await text("#stdout")).includes("hello from python"), `stdout: ${await text("#stdout")}`);
    check(await text("#exit-code") === "0", `exit code ${await text("#exit-code")}`);
    for (const id of ["#duration", "#cpu", "#peak-memory"]) {
      check(/\d/.test(await text(id)), `${id} shows ${await text(id)}`);
    }
    jobs.python = r.id;
  });

  await step("Go hello world", async () => {
    await selectLanguage("go");
    await setCode('package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello from go")\n}\n');
    const r = await runAndWait();
    check(r.status === "completed", `status ${r.status}`);
    check(await text("#verdict") === "ok", `verdict ${await text("#verdict")}: ${await text("#compile-output")}`);
    check((await text("#stdout")).includes("hello from go"), `stdout: ${await text("#stdout")}`);
    jobs.go = r.id;
  });

  await step("output streams in while the job still runs", async () => {
    await selectLanguage("python");
    await setCode('import time\nprint("first line", flush=True)\ntime.sleep(3)\nprint("second line")\n');
    await page.click("#run");
    await page.waitForFunction(() => document.getElementById("stdout").textContent.includes("first line"));
    const [status, out] = await page.evaluate(() =>
      [document.getElementById("status").dataset.status, document.getElementById("stdout").textContent]);
    check(status === "running", `status was ${status} when the first line showed`);
    check(!out.includes("second line"), "both lines came at once");
    await page.locator("#status[data-status='completed']").waitFor();
    check((await text("#stdout")).includes("second line"), `stdout: ${await text("#stdout")}`);
  });

  await step("Cancel stops a running loop", async () => {
    await setCode('print("looping", flush=True)\nwhile True:\n    pass\n');
    await page.locator("summary").click();
    await page.fill("#timeout", "50000");
    await page.click("#run");
    await page.waitForFunction(() => document.getElementById("stdout").textContent.includes("looping"));
    check(await page.isEnabled("#cancel"), "Cancel is disabled while the job runs");
    await page.click("#cancel");
    await waitStatus("canceled");
    check(await page.isDisabled("#cancel"), "Cancel stays enabled after the end");
    check(await page.isEnabled("#run"), "Run stays disabled after the end");
    await page.fill("#timeout", "");
  });

  await step("a Go syntax error shows as a compile error", async () => {
    await selectLanguage("go");
    await setCode("package main\n\nfunc main() {\n\tfmt.Println(\"unclosed\"\n}\n");
    const r = await runAndWait();
    check(r.status === "completed", `status ${r.status}`);
    check(await text("#verdict") === "compile_error", `verdict ${await text("#verdict")}`);
    const compiler = (await text("#compile-output")) + (await text("#stderr"));
    check(/syntax error|expected/.test(compiler), `the compiler's message is not shown: ${compiler}`);
  });

  await step("the recent jobs list opens an earlier job", async () => {
    await page.click("#jobs-refresh");
    const entry = page.locator(`#jobs button[data-job-id="${jobs.go}"]`);
    await entry.waitFor();
    check(await page.locator("#jobs button").count() >= 5, "fewer than the five jobs run");
    await entry.click();
    await page.waitForFunction((id) => document.getElementById("job-id").textContent === id, jobs.go);
    check((await text("#stdout")).includes("hello from go"), `stdout: ${await text("#stdout")}`);
    check(await text("#verdict") === "ok", `verdict ${await text("#verdict")}`);
    const shot = join(outDir, "playground-desktop.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
  });

  await step("a phone-sized screen gets one column and no sideways scrolling", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const [scroll, width] = await page.evaluate(() =>
      [document.documentElement.scrollWidth, window.innerWidth]);
    check(scroll <= width, `the page is ${scroll}px wide on a ${width}px screen`);
    const shot = join(outDir, "playground-phone.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  page = await newPage(keyBase);

  await step("with keys and none given, the page shows the 401", async () => {
    const error = page.locator("#error");
    await error.waitFor();
    check((await error.innerText()).includes("Unauthorized (401)"), `error: ${await error.innerText()}`);
  });

  await step("a bad key shows the 401 and what it says", async () => {
    await page.fill("#api-key", "ignis_not_a_real_key");
    await page.click("#key-save");
    await page.waitForFunction(() => document.getElementById("error").textContent.includes("unknown API key"));
    check((await text("#error")).includes("401"), `error: ${await text("#error")}`);
  });

  await step("a good key, entered once, is kept and never put in the URL", async () => {
    await page.fill("#api-key", goodKey);
    await page.click("#key-save");
    await page.locator("#error").waitFor({ state: "hidden" });
    await page.reload();
    await selectLanguage("python");
    check(await page.locator("#error").isHidden(), `error after reload: ${await text("#error")}`);
    await setCode('print("keyed hello")\n');
    const r = await runAndWait();
    check(r.status === "completed" && (await text("#stdout")).includes("keyed hello"),
      `status ${r.status}, stdout ${await text("#stdout")}`);
    check(!page.url().includes(goodKey), `the key is in the URL: ${page.url()}`);
  });

  console.log("playground: all scenarios passed");
} catch (e) {
  console.error(`FAILED: ${current}: ${e.message}`);
  if (page) {
    const shot = join(outDir, "playground-failure.png");
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.error(`screenshot: ${shot}`);
    console.error(`status ${await text("#status").catch(() => "?")}, error box: ${await text("#error").catch(() => "?")}`);
  }
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
