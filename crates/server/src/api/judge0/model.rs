//! Judge0 CE's vocabulary: its language ids and statuses, and how an
//! Ignis job looks as a Judge0 submission. No HTTP here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ignis_protocol::Verdict;
use serde_json::{json, Map, Value};

use super::request::Kept;
use crate::job::{Job, JobStatus};

/// The Judge0 CE release whose API this imitates. The official SDK picks
/// its language ids by this number, so it is the one that lists Python as
/// 71 and Go as 60.
pub const VERSION: &str = "1.13.1";

/// An Ignis language as Judge0 CE numbers it: its usual id, shown in
/// `/languages`, and the ids of other releases of the same language that
/// are accepted on submission (they run the one version Ignis has).
#[derive(Debug)]
pub struct LangId {
    pub ignis: &'static str,
    pub label: &'static str,
    pub id: i64,
    pub also: &'static [i64],
}

/// Judge0 CE's ids (its `db/languages` seeds), for the languages an Ignis
/// image may be called.
pub const LANGUAGES: &[LangId] = &[
    LangId {
        ignis: "python",
        label: "Python",
        id: 71,
        also: &[92, 100, 109],
    },
    LangId {
        ignis: "go",
        label: "Go",
        id: 60,
        also: &[95, 106, 107],
    },
    LangId {
        ignis: "javascript",
        label: "JavaScript (Node.js",
        id: 63,
        also: &[93, 97, 102],
    },
    LangId {
        ignis: "node",
        label: "JavaScript (Node.js",
        id: 63,
        also: &[93, 97, 102],
    },
    LangId {
        ignis: "c",
        label: "C (GCC",
        id: 50,
        also: &[48, 49, 103],
    },
    LangId {
        ignis: "cpp",
        label: "C++ (GCC",
        id: 54,
        also: &[52, 53, 105],
    },
    LangId {
        ignis: "rust",
        label: "Rust",
        id: 73,
        also: &[108],
    },
    LangId {
        ignis: "java",
        label: "Java (OpenJDK",
        id: 62,
        also: &[91],
    },
    LangId {
        ignis: "ruby",
        label: "Ruby",
        id: 72,
        also: &[],
    },
    LangId {
        ignis: "bash",
        label: "Bash",
        id: 46,
        also: &[],
    },
    LangId {
        ignis: "php",
        label: "PHP",
        id: 68,
        also: &[98],
    },
    LangId {
        ignis: "typescript",
        label: "TypeScript",
        id: 74,
        also: &[94, 101],
    },
];

pub fn by_ignis(name: &str) -> Option<&'static LangId> {
    LANGUAGES.iter().find(|l| l.ignis == name)
}

/// The Ignis languages a Judge0 id may mean (a name may have two images).
pub fn by_id(id: i64) -> impl Iterator<Item = &'static LangId> {
    LANGUAGES
        .iter()
        .filter(move |l| l.id == id || l.also.contains(&id))
}

/// "Python (3.11.2)": Judge0's naming, with the version Ignis really runs.
pub fn display_name(lang: &LangId, version: &str) -> String {
    let v = version_number(version);
    match lang.label.strip_suffix(" (Node.js") {
        Some(l) => format!("{l} (Node.js {v})"),
        None if lang.label.contains('(') => format!("{} {v})", lang.label),
        None => format!("{} ({v})", lang.label),
    }
}

/// "1.19.8" out of "go version go1.19.8 linux/amd64"; the first dotted
/// number in a runtime's version line, else the line itself.
pub fn version_number(version: &str) -> String {
    for word in version.split_whitespace() {
        let w = word.trim_start_matches(|c: char| !c.is_ascii_digit());
        let n: String = w
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let n = n.trim_end_matches('.');
        if n.contains('.') {
            return n.to_owned();
        }
    }
    version.to_owned()
}

/// Judge0's statuses, by id.
pub const STATUSES: [(i64, &str); 14] = [
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

pub fn status_json(id: i64) -> Value {
    let description = STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("Internal Error", |(_, d)| d);
    json!({"id": id, "description": description})
}

/// Judge0's status of a job: where it is, or how it ended.
pub fn status(job: &Job, kept: &Kept) -> (i64, Option<String>) {
    let r = match (job.status, &job.result) {
        (JobStatus::Queued, _) => return (1, None),
        (JobStatus::Running, _) => return (2, None),
        (JobStatus::Canceled, _) => return (13, Some("the job was canceled".into())),
        (JobStatus::Completed, None) => return (13, Some("the job has no result".into())),
        (JobStatus::Completed, Some(r)) => r,
    };
    let cpu_over = kept
        .cpu_time_limit
        .is_some_and(|c| r.cpu_ms as f64 > (c + kept.cpu_extra_time.unwrap_or(0.0)) * 1000.0);
    match r.status {
        Verdict::Ok if cpu_over => (5, Some("CPU time limit exceeded".into())),
        Verdict::Ok => match &kept.expected_output {
            Some(want) if strip(want) != strip(&String::from_utf8_lossy(&r.stdout)) => (4, None),
            _ => (3, None),
        },
        Verdict::CompileError => (6, None),
        Verdict::Timeout => (5, Some("Time limit exceeded".into())),
        Verdict::OutputLimit => (8, Some("Output limit exceeded".into())),
        Verdict::MemoryLimit => (12, Some("Memory limit exceeded".into())),
        Verdict::InternalError => (13, r.message.clone()),
        Verdict::RuntimeError => match r.signal {
            Some(11) => (7, Some("Caught fatal signal 11".into())),
            Some(25) => (8, Some("Caught fatal signal 25".into())),
            Some(8) => (9, Some("Caught fatal signal 8".into())),
            Some(6) => (10, Some("Caught fatal signal 6".into())),
            Some(s) => (12, Some(format!("Caught fatal signal {s}"))),
            None => {
                let code = r.exit_code.unwrap_or(1);
                (11, Some(format!("Exited with error status {code}")))
            }
        },
    }
}

/// Judge0 compares outputs line by line without trailing blanks.
fn strip(s: &str) -> String {
    let lines: Vec<&str> = s.split('\n').map(str::trim_end).collect();
    lines.join("\n").trim().to_owned()
}

/// Every field Judge0 shows of a submission (`fields=*`).
pub const ALL_FIELDS: &[&str] = &[
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
];

/// What `GET /submissions/{token}` shows without `fields`.
pub const DEFAULT_FIELDS: &[&str] = &[
    "stdout",
    "time",
    "memory",
    "stderr",
    "token",
    "compile_output",
    "message",
    "status",
];

/// The `fields` a request asks for, checked.
pub fn parse_fields(raw: Option<&str>) -> Result<Vec<&'static str>, String> {
    let raw = match raw.map(str::trim) {
        None | Some("") => return Ok(DEFAULT_FIELDS.to_vec()),
        Some("*") => return Ok(ALL_FIELDS.to_vec()),
        Some(r) => r,
    };
    raw.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            ALL_FIELDS
                .iter()
                .find(|a| **a == f)
                .copied()
                .ok_or_else(|| format!("invalid field: \"{f}\""))
        })
        .collect()
}

fn text(s: Option<String>, base64: bool) -> Value {
    match s {
        None => Value::Null,
        Some(s) if base64 => Value::String(STANDARD.encode(s.as_bytes())),
        Some(s) => Value::String(s),
    }
}

fn bytes(b: &[u8], base64: bool) -> Value {
    match base64 {
        true => Value::String(STANDARD.encode(b)),
        false => Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

fn stamp(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    })
}

/// A job as Judge0 shows a submission, with only `fields`. `name` is the
/// display name of its language, when this fleet still has it.
pub fn submission(job: &Job, fields: &[&str], base64: bool, name: Option<String>) -> Value {
    let kept = Kept::of(job);
    let (status_id, message) = status(job, &kept);
    let r = job.result.as_ref();
    let done = |f: &dyn Fn(&ignis_vmm::RunReport) -> Value| r.map_or(Value::Null, f);
    let source = job
        .request
        .files
        .first()
        .map_or(&[][..], |f| &f.content[..]);
    let mut out = Map::new();
    for &field in fields {
        let v = match field {
            "token" => json!(job.id),
            "source_code" => bytes(source, base64),
            "language_id" => json!(kept.language_id),
            "language" => {
                json!({"id": kept.language_id, "name": name.clone().unwrap_or_else(|| job.language.clone())})
            }
            "stdin" => bytes(&job.request.stdin, base64),
            "expected_output" => text(kept.expected_output.clone(), base64),
            "stdout" => done(&|r| bytes(&r.stdout, base64)),
            "stderr" => done(&|r| bytes(&r.stderr, base64)),
            "compile_output" => done(&|r| text(r.compile_output.clone(), base64)),
            "message" => json!(message),
            "status" => status_json(status_id),
            "status_id" => json!(status_id),
            "created_at" => stamp(Some(job.created_at)),
            "finished_at" => stamp(job.finished_at),
            "time" => done(&|r| json!(format!("{:.3}", r.cpu_ms as f64 / 1000.0))),
            "wall_time" => done(&|r| json!(format!("{:.3}", r.duration_ms as f64 / 1000.0))),
            "memory" => done(&|r| json!(r.memory_kib)),
            "exit_code" => done(&|r| json!(r.exit_code)),
            "exit_signal" => done(&|r| json!(r.signal)),
            "number_of_runs" => json!(1),
            "cpu_time_limit" => json!(kept.cpu_time_limit.unwrap_or(kept.wall_time_limit)),
            "cpu_extra_time" => json!(kept.cpu_extra_time.unwrap_or(0.0)),
            "wall_time_limit" => json!(kept.wall_time_limit),
            "memory_limit" => json!(kept.memory_limit),
            "stack_limit" => json!(kept.stack_limit),
            "max_processes_and_or_threads" => json!(kept.max_processes_and_or_threads),
            "max_file_size" => json!(kept.max_file_size),
            "command_line_arguments" => json!(kept.command_line_arguments),
            "enable_per_process_and_thread_time_limit"
            | "enable_per_process_and_thread_memory_limit"
            | "redirect_stderr_to_stdout"
            | "enable_network" => json!(false),
            _ => Value::Null,
        };
        out.insert(field.to_owned(), v);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_version_ignis_runs() {
        assert_eq!(version_number("go version go1.19.8 linux/amd64"), "1.19.8");
        assert_eq!(version_number("Python 3.11.2"), "3.11.2");
        assert_eq!(version_number("v20.1.0"), "20.1.0");
        assert_eq!(version_number("odd"), "odd");
        let named = |n: &str, v: &str| by_ignis(n).map(|l| display_name(l, v));
        assert_eq!(
            named("python", "Python 3.11.2").as_deref(),
            Some("Python (3.11.2)")
        );
        assert_eq!(named("c", "gcc 12.2.0").as_deref(), Some("C (GCC 12.2.0)"));
        assert_eq!(
            named("node", "v18.13.0").as_deref(),
            Some("JavaScript (Node.js 18.13.0)")
        );
        assert_eq!(by_id(92).map(|l| l.ignis).collect::<Vec<_>>(), ["python"]);
    }
}
