// The Ignis playground: a client of the /v1 API like any other. The API key
// lives in localStorage and travels only in the Authorization header.
"use strict";

const KEY = "ignis.apiKey";
const $ = (id) => document.getElementById(id);

const SAMPLES = {
  python: 'print("Hello, world!")\n',
  go: 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("Hello, world!")\n}\n',
  javascript: 'console.log("Hello, world!");\n',
  node: 'console.log("Hello, world!");\n',
  c: '#include <stdio.h>\n\nint main(void) {\n\tputs("Hello, world!");\n\treturn 0;\n}\n',
  cpp: '#include <iostream>\n\nint main() {\n\tstd::cout << "Hello, world!\\n";\n}\n',
  java: 'public class Main {\n\tpublic static void main(String[] args) {\n\t\tSystem.out.println("Hello, world!");\n\t}\n}\n',
  rust: 'fn main() {\n    println!("Hello, world!");\n}\n',
  php: '<?php\necho "Hello, world!\\n";\n',
};

const state = { job: null, abort: null, sample: "" };

// An error the API answered with: its RFC 9457 problem document, or what
// stands in for one when the answer was not JSON.
class ApiError extends Error {
  constructor(problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.problem = problem;
  }
}

function apiKey() {
  return localStorage.getItem(KEY) || "";
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method, headers, signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError({ title: "The server cannot be reached", detail: String(e.message || e), status: 0 });
  }
  if (res.ok) return res;
  const text = await res.text();
  let problem;
  try {
    problem = JSON.parse(text);
  } catch {
    problem = {};
  }
  throw new ApiError({
    title: problem.title || `HTTP ${res.status} ${res.statusText}`,
    detail: problem.detail || text.slice(0, 500) || "(no detail)",
    status: res.status,
    type: problem.type,
  });
}

function showError(e) {
  const box = $("error");
  if (!e) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const p = e.problem;
  box.textContent = p ? `${p.title}${p.status ? ` (${p.status})` : ""}: ${p.detail}` : String(e.message || e);
  box.dataset.status = p ? String(p.status) : "";
  box.hidden = false;
  if (p && p.status === 401) $("api-key").focus();
}

// ---- The API key ----

function showKeyState() {
  const key = apiKey();
  $("key-state").textContent = key ? `saved (…${key.slice(-4)})` : "none saved";
  $("api-key").value = "";
  $("api-key").placeholder = key ? "replace the saved key" : "none (--dev)";
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY, key);
  showKeyState();
  start();
});

$("key-clear").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  showKeyState();
  start();
});

// ---- The editor and languages ----

const editor = window.IgnisEditor.create($("editor"), { onRun: () => run() });

function sampleFor(lang) {
  return SAMPLES[lang] || SAMPLES[lang.replace(/[^a-z+]+.*$/, "")] || "";
}

function pickLanguage(lang) {
  editor.setLanguage(lang);
  // Replace the code only while it is still the previous sample.
  const code = editor.getCode();
  if (code === state.sample || code.trim() === "") {
    state.sample = sampleFor(lang);
    editor.setCode(state.sample);
  }
  localStorage.setItem("ignis.language", lang);
}

async function loadLanguages() {
  const langs = await (await api("/v1/languages")).json();
  const select = $("language");
  const before = select.value || localStorage.getItem("ignis.language");
  select.replaceChildren(...langs.map((l) => {
    const o = document.createElement("option");
    o.value = l.name;
    o.textContent = `${l.name} (${l.version})`;
    return o;
  }));
  if (langs.some((l) => l.name === before)) select.value = before;
  if (select.value) pickLanguage(select.value);
}

$("language").addEventListener("change", (ev) => pickLanguage(ev.target.value));

// ---- A run ----

function setStatus(status) {
  $("status").textContent = status || "–";
  $("status").dataset.status = status || "";
  const live = status === "submitting" || status === "queued" || status === "running";
  $("run").disabled = live;
  $("cancel").disabled = !live || !state.job;
}

function ms(v) {
  return v == null ? "–" : v < 1000 ? `${v} ms` : `${(v / 1000).toFixed(2)} s`;
}

function clearResult() {
  for (const id of ["verdict", "exit-code", "duration", "cpu", "peak-memory", "job-id"]) $(id).textContent = "–";
  $("verdict").dataset.verdict = "";
  $("stdout").textContent = "";
  $("stderr").textContent = "";
  $("compile-output").textContent = "";
  $("compile-block").hidden = true;
}

// Shows a job as GET /v1/jobs/{id} (or the `result` event) has it.
function showJob(job) {
  state.job = job.id;
  $("job-id").textContent = job.id;
  const r = job.result;
  if (r) {
    $("verdict").textContent = r.status;
    $("verdict").dataset.verdict = r.status;
    $("exit-code").textContent = r.signal != null ? `signal ${r.signal}` : r.exit_code ?? "–";
    $("duration").textContent = ms(r.duration_ms);
    $("cpu").textContent = ms(r.cpu_ms);
    $("peak-memory").textContent = r.memory_kib == null ? "–" : `${(r.memory_kib / 1024).toFixed(1)} MiB`;
    $("stdout").textContent = r.stdout + (r.stdout_truncated ? "\n[output truncated]" : "");
    $("stderr").textContent = r.stderr + (r.stderr_truncated ? "\n[output truncated]" : "");
    $("compile-output").textContent = r.compile_output || r.message || "";
    $("compile-block").hidden = !(r.compile_output || r.message);
  }
  setStatus(job.status);
}

const FINAL = new Set(["completed", "canceled"]);

// Reads the job's Server-Sent Events with fetch (EventSource cannot send
// the Authorization header). Returns the job of the `result` event, if any.
async function follow(id, signal) {
  const res = await api(`/v1/jobs/${id}/events`, { signal });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buf += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length === 0) continue;
      const msg = JSON.parse(data.join("\n"));
      if (event === "status") setStatus(msg.status);
      else if (event === "stdout" || event === "stderr") $(event).textContent += msg.data;
      else if (event === "result") return msg;
    }
  }
}

// Follows job `id` to its end and shows it.
async function watch(id) {
  state.abort?.abort();
  const abort = new AbortController();
  state.abort = abort;
  try {
    let job = await follow(id, abort.signal);
    // The stream ended without the end (a proxy cut it, say): ask again.
    while (!job || !FINAL.has(job.status)) {
      job = await (await api(`/v1/jobs/${id}`, { signal: abort.signal })).json();
      if (!FINAL.has(job.status)) await new Promise((r) => setTimeout(r, 1000));
    }
    if (state.abort === abort) showJob(job);
  } catch (e) {
    if (e.name !== "AbortError") {
      showError(e);
      setStatus("unknown");
    }
  } finally {
    if (state.abort === abort) state.abort = null;
    loadJobs().catch(() => {});
  }
}

function body() {
  const req = { language: $("language").value, code: editor.getCode() };
  const stdin = $("stdin").value;
  if (stdin) req.stdin = stdin;
  const args = $("args").value.replace(/\n$/, "");
  if (args) req.args = args.split("\n");
  const limits = {};
  if ($("timeout").value) limits.timeout_ms = Number($("timeout").value);
  if ($("memory").value) limits.memory_mib = Number($("memory").value);
  if (Object.keys(limits).length) req.limits = limits;
  return req;
}

async function run() {
  if ($("run").disabled) return;
  if (!$("language").value) {
    showError(new Error("No language to run: the server lists none (or the list could not be loaded)."));
    return;
  }
  showError(null);
  state.abort?.abort();
  state.job = null;
  clearResult();
  setStatus("submitting");
  let job;
  try {
    job = await (await api("/v1/jobs", { method: "POST", body: body() })).json();
  } catch (e) {
    showError(e);
    setStatus("");
    return;
  }
  showJob(job);
  await watch(job.id);
}

async function cancel() {
  if (!state.job) return;
  try {
    await api(`/v1/jobs/${state.job}`, { method: "DELETE" });
  } catch (e) {
    // 409: it ended meanwhile; its end arrives on the stream anyway.
    if (e.problem?.status !== 409) showError(e);
  }
}

$("run").addEventListener("click", run);
$("cancel").addEventListener("click", cancel);
// Ctrl+Enter runs from anywhere on the page (the editor has its own binding).
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && !ev.defaultPrevented) {
    ev.preventDefault();
    run();
  }
});

// ---- Recent jobs ----

async function loadJobs() {
  const { jobs } = await (await api("/v1/jobs?limit=20")).json();
  const list = $("jobs");
  if (!jobs.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No jobs yet.";
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...jobs.map((j) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.jobId = j.id;
    b.title = j.id;
    const lang = document.createElement("span");
    lang.textContent = j.language;
    const verdict = document.createElement("span");
    verdict.textContent = j.result ? j.result.status : j.status;
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${new Date(j.created_at).toLocaleString()} · ${j.id.slice(-8)}`;
    b.append(lang, verdict, when);
    b.addEventListener("click", () => openJob(j.id));
    li.append(b);
    return li;
  }));
}

async function openJob(id) {
  showError(null);
  state.abort?.abort();
  clearResult();
  try {
    const job = await (await api(`/v1/jobs/${id}`)).json();
    showJob(job);
    if (!FINAL.has(job.status)) await watch(id);
  } catch (e) {
    showError(e);
  }
}

$("jobs-refresh").addEventListener("click", () => loadJobs().catch(showError));

// ---- Start ----

async function start() {
  showError(null);
  try {
    await loadLanguages();
    await loadJobs();
  } catch (e) {
    showError(e);
  }
}

showKeyState();
setStatus("");
start();
