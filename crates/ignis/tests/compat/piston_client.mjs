// Drives Ignis's Piston compatible API with the `piston-client` package,
// unchanged. Usage: node piston_client.mjs <server URL>. Exits non-zero
// with the reason on the first scenario that does not hold.
import piston from "piston-client";

const server = process.argv[2];
const client = piston({ server });

function fail(what, got) {
  console.error(`${what}: ${JSON.stringify(got)}`);
  process.exit(1);
}

const runtimes = await client.runtimes();
if (!Array.isArray(runtimes)) fail("runtimes is not a list", runtimes);
for (const lang of ["python", "go"]) {
  if (!runtimes.some((r) => r.language === lang && r.version)) fail(`no ${lang} runtime`, runtimes);
}
console.log("ok: runtimes");

let r = await client.execute("python", "import sys\nprint(input(), sys.argv[1:])", {
  stdin: "hello",
  args: ["a", "b c"],
});
if (r.run?.stdout !== "hello ['a', 'b c']\n" || r.run.code !== 0) fail("python with stdin and args", r);
console.log("ok: python with stdin and args");

const go = 'package main\nimport ("fmt"; "os")\nfunc main() { var s string; fmt.Scan(&s); fmt.Println(s, os.Args[1:]) }\n';
r = await client.execute("go", go, { stdin: "gopher", args: ["x", "y"], compileTimeout: 60000 });
if (r.run?.stdout !== "gopher [x y]\n" || r.run.code !== 0 || r.compile?.code !== 0) fail("go with stdin and args", r);
console.log("ok: go with stdin and args");

r = await client.execute({
  language: "go",
  files: [{ name: "main.go", content: "package main\nfunc main() { nope() }\n" }],
  compileTimeout: 60000,
});
if (!(r.compile?.code > 0) || !r.compile.output.includes("undefined") || r.run) fail("go compile error", r);
console.log("ok: go compile error");

r = await client.execute("python", "raise SystemExit(4)");
if (r.run?.code !== 4) fail("python exit code", r);
console.log("ok: python exit code");
console.log("all piston scenarios passed");
