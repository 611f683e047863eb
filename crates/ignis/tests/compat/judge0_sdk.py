"""Drives Ignis's Judge0 CE compatible API with the official `judge0` SDK,
unchanged. Usage: judge0_sdk.py <endpoint> <api key>. Exits non-zero with
the reason on the first scenario that does not hold."""

import sys

import judge0
from judge0 import Status

endpoint, key = sys.argv[1], sys.argv[2]
client = judge0.Client(endpoint, {"X-Auth-Token": key})

GO_HELLO = 'package main\nimport "fmt"\nfunc main() { var s string; fmt.Scan(&s); fmt.Println("go", s, 6*7) }\n'
GO_BROKEN = "package main\nfunc main() { undefined_thing() }\n"


def check(what, sub, status, **want):
    got = {k: getattr(sub, k) for k in want}
    if sub.status != status or got != want:
        sys.exit(
            f"{what}: wanted {status!r} {want}, got {sub.status!r} {got} "
            f"(stderr {sub.stderr!r}, compile_output {sub.compile_output!r}, message {sub.message!r})"
        )
    print(f"ok: {what}", flush=True)


# judge0.run: create, then wait, for Python and Go, with stdin.
check(
    "run python with stdin",
    judge0.run(client=client, source_code="print(input()[::-1])", stdin="abc", language=judge0.PYTHON),
    Status.ACCEPTED,
    stdout="cba\n",
)
check(
    "run go with stdin",
    judge0.run(client=client, source_code=GO_HELLO, stdin="hi", language=judge0.GO),
    Status.ACCEPTED,
    stdout="go hi 42\n",
)

# async_execute + wait.
sub = judge0.async_execute(client=client, source_code="print(6 * 7)", language=judge0.PYTHON)
sub = judge0.wait(client=client, submissions=sub)
check("async_execute + wait python", sub, Status.ACCEPTED, stdout="42\n")
sub = judge0.async_execute(client=client, source_code=GO_HELLO, stdin="x", language=judge0.GO)
sub = judge0.wait(client=client, submissions=sub)
check("async_execute + wait go", sub, Status.ACCEPTED, stdout="go x 42\n")

# A compile error, a runtime error, a timeout.
sub = judge0.run(client=client, source_code=GO_BROKEN, language=judge0.GO)
check("go compile error", sub, Status.COMPILATION_ERROR, stdout=None)
if "undefined" not in (sub.compile_output or ""):
    sys.exit(f"compile error without the compiler's words: {sub.compile_output!r}")
sub = judge0.run(client=client, source_code="import sys\nprint('x')\nsys.exit(3)", language=judge0.PYTHON)
check("python runtime error", sub, Status.RUNTIME_ERROR_NZEC, exit_code=3, stdout="x\n")
sub = judge0.run(client=client, source_code="1/0", language=judge0.PYTHON)
check("python exception", sub, Status.RUNTIME_ERROR_NZEC, exit_code=1)
if "ZeroDivisionError" not in (sub.stderr or ""):
    sys.exit(f"no traceback on stderr: {sub.stderr!r}")
sub = judge0.run(client=client, source_code="while True: pass", language=judge0.PYTHON, wall_time_limit=1)
check("python timeout", sub, Status.TIME_LIMIT_EXCEEDED)

# expected_output: Accepted and Wrong Answer, as test cases (a batch).
subs = judge0.run(
    client=client,
    source_code="print(int(input()) * 2)",
    language=judge0.PYTHON,
    test_cases=[("2", "4"), ("3", "7")],
)
check("expected output matches", subs[0], Status.ACCEPTED, stdout="4\n")
check("expected output differs", subs[1], Status.WRONG_ANSWER, stdout="6\n")
print("all judge0 scenarios passed", flush=True)
