//! A Judge0 submission as clients send it, checked and translated into an
//! Ignis job request. No HTTP here.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::model::by_ignis;
use crate::api::parsed::{CreateJob, Encoding, FileBody, LimitsBody};
use crate::config::ServerConfig;
use crate::job::Job;

/// A number as Judge0 clients send it: JSON number or numeric string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Num {
    Number(f64),
    Text(String),
}

impl Num {
    fn value(&self) -> Option<f64> {
        match self {
            Num::Number(n) => Some(*n),
            Num::Text(s) => s.trim().parse().ok(),
        }
        .filter(|n: &f64| n.is_finite())
    }
}

/// `POST /submissions`, as Judge0 takes it. Unknown fields are ignored, as
/// Judge0 ignores them: its clients send their own (`language`, `token`).
#[derive(Debug, Default, Deserialize)]
pub struct SubmissionBody {
    pub source_code: Option<String>,
    pub language_id: Option<Num>,
    pub compiler_options: Option<String>,
    pub command_line_arguments: Option<String>,
    pub stdin: Option<String>,
    pub expected_output: Option<String>,
    pub cpu_time_limit: Option<Num>,
    pub cpu_extra_time: Option<Num>,
    pub wall_time_limit: Option<Num>,
    pub memory_limit: Option<Num>,
    pub stack_limit: Option<Num>,
    pub max_processes_and_or_threads: Option<Num>,
    pub enable_per_process_and_thread_time_limit: Option<bool>,
    pub enable_per_process_and_thread_memory_limit: Option<bool>,
    pub max_file_size: Option<Num>,
    pub redirect_stderr_to_stdout: Option<bool>,
    pub enable_network: Option<bool>,
    pub number_of_runs: Option<Num>,
    pub callback_url: Option<String>,
    pub additional_files: Option<String>,
}

/// What Judge0 answers for a refused submission: each field's complaints.
pub type FieldErrors = BTreeMap<&'static str, Vec<String>>;

/// What the job keeps of its submission for later answers (`Job::compat`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub language_id: i64,
    pub expected_output: Option<String>,
    pub command_line_arguments: Option<String>,
    pub cpu_time_limit: Option<f64>,
    pub cpu_extra_time: Option<f64>,
    pub wall_time_limit: f64,
    pub memory_limit: u64,
    pub stack_limit: Option<f64>,
    pub max_processes_and_or_threads: u32,
    pub max_file_size: u64,
}

impl Kept {
    pub fn of(job: &Job) -> Kept {
        job.compat
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| Kept {
                // A job submitted through /v1: described by its own limits.
                language_id: by_ignis(&job.language).map_or(0, |l| l.id),
                wall_time_limit: job.request.limits.timeout_ms as f64 / 1000.0,
                memory_limit: job.request.limits.memory_mib * 1024,
                max_processes_and_or_threads: job.request.limits.max_processes,
                max_file_size: job.request.limits.max_output_kib,
                ..Kept::default()
            })
    }
}

/// What a Judge0 client can know of the language behind an id.
#[derive(Debug, Clone)]
pub struct Target {
    pub ignis: String,
    pub source_file: String,
    pub vm_memory_mib: u64,
}

fn decode(
    errors: &mut FieldErrors,
    field: &'static str,
    s: Option<String>,
    base64: bool,
) -> Option<String> {
    let s = s?;
    if !base64 {
        return Some(s);
    }
    // Judge0's own encoder breaks lines; so do many clients.
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match STANDARD.decode(clean.as_bytes()) {
        Ok(_) => Some(clean),
        Err(_) => {
            errors
                .entry(field)
                .or_default()
                .push("is not valid base64".into());
            None
        }
    }
}

/// Seconds to whole milliseconds, in range, or a Judge0-style complaint.
fn seconds(
    errors: &mut FieldErrors,
    field: &'static str,
    v: &Option<Num>,
    max_ms: u64,
) -> Option<f64> {
    let raw = v.as_ref()?;
    let Some(s) = raw.value() else {
        errors
            .entry(field)
            .or_default()
            .push("is not a number".into());
        return None;
    };
    let max = max_ms as f64 / 1000.0;
    // Extra time may be none at all; a limit may not.
    if s < 0.0 || (s == 0.0 && field != "cpu_extra_time") {
        errors
            .entry(field)
            .or_default()
            .push("must be greater than 0".into());
    } else if s > max {
        let m = format!("must be less than or equal to {max}");
        errors.entry(field).or_default().push(m);
    }
    Some(s)
}

fn whole(
    errors: &mut FieldErrors,
    field: &'static str,
    v: &Option<Num>,
    (min, max): (u64, u64),
) -> Option<u64> {
    let raw = v.as_ref()?;
    let Some(n) = raw.value() else {
        errors
            .entry(field)
            .or_default()
            .push("is not a number".into());
        return None;
    };
    if n < min as f64 {
        let m = format!("must be greater than or equal to {min}");
        errors.entry(field).or_default().push(m);
    } else if n > max as f64 {
        let m = format!("must be less than or equal to {max}");
        errors.entry(field).or_default().push(m);
    }
    Some(n.ceil() as u64)
}

fn refuse(errors: &mut FieldErrors, field: &'static str, why: &str) {
    errors.entry(field).or_default().push(why.to_owned());
}

/// The Judge0 language id a submission names (a number, or a numeric string).
pub fn language_id(body: &SubmissionBody) -> Result<i64, FieldErrors> {
    let mut errors = FieldErrors::new();
    match body.language_id.as_ref().map(Num::value) {
        None => refuse(&mut errors, "language_id", "can't be blank"),
        Some(Some(n)) if n.fract() == 0.0 => return Ok(n as i64),
        Some(_) => refuse(&mut errors, "language_id", "is not a number"),
    }
    Err(errors)
}

/// Translates a Judge0 submission into an Ignis job request, and what the
/// job must keep to answer as Judge0 later. Every limit is checked against
/// this server's maxima and refused (never clamped) in Judge0's terms.
pub fn translate(
    body: SubmissionBody,
    language_id: i64,
    target: &Target,
    cfg: &ServerConfig,
    base64: bool,
) -> Result<(CreateJob, Kept), FieldErrors> {
    let mut e = FieldErrors::new();
    let (d, m) = (cfg.defaults, cfg.maxima);
    let memory_max_mib = m.memory_mib.min(target.vm_memory_mib.saturating_sub(64));
    let source = decode(&mut e, "source_code", body.source_code, base64);
    if source.as_deref().is_none_or(str::is_empty) && !e.contains_key("source_code") {
        refuse(&mut e, "source_code", "can't be blank");
    }
    let stdin = decode(&mut e, "stdin", body.stdin, base64);
    let expected = decode(&mut e, "expected_output", body.expected_output, base64);
    let cpu = seconds(&mut e, "cpu_time_limit", &body.cpu_time_limit, m.timeout_ms);
    let extra = seconds(&mut e, "cpu_extra_time", &body.cpu_extra_time, m.timeout_ms);
    let wall = seconds(
        &mut e,
        "wall_time_limit",
        &body.wall_time_limit,
        m.timeout_ms,
    );
    let memory_kb = whole(
        &mut e,
        "memory_limit",
        &body.memory_limit,
        (16 * 1024, memory_max_mib * 1024),
    );
    let stack = body.stack_limit.as_ref().and_then(Num::value);
    let procs = whole(
        &mut e,
        "max_processes_and_or_threads",
        &body.max_processes_and_or_threads,
        (1, u64::from(m.max_processes)),
    );
    let file_kb = whole(
        &mut e,
        "max_file_size",
        &body.max_file_size,
        (1, m.max_output_kib),
    );
    if body
        .compiler_options
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        refuse(
            &mut e,
            "compiler_options",
            "setting compiler options is not allowed",
        );
    }
    if body
        .additional_files
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        refuse(
            &mut e,
            "additional_files",
            "additional files are not supported",
        );
    }
    if body.callback_url.as_deref().is_some_and(|s| !s.is_empty()) {
        refuse(&mut e, "callback_url", "callbacks are not enabled");
    }
    if body.enable_network == Some(true) {
        refuse(&mut e, "enable_network", "enabling network is not allowed");
    }
    if body.redirect_stderr_to_stdout == Some(true) {
        refuse(&mut e, "redirect_stderr_to_stdout", "is not supported");
    }
    for (field, on) in [
        (
            "enable_per_process_and_thread_time_limit",
            body.enable_per_process_and_thread_time_limit,
        ),
        (
            "enable_per_process_and_thread_memory_limit",
            body.enable_per_process_and_thread_memory_limit,
        ),
    ] {
        if on == Some(true) {
            refuse(&mut e, field, "is not allowed");
        }
    }
    if let Some(n) = &body.number_of_runs {
        if n.value() != Some(1.0) {
            refuse(&mut e, "number_of_runs", "must be 1");
        }
    }
    let args = match body.command_line_arguments.as_deref().map(split_args) {
        Some(Ok(a)) => a,
        Some(Err(why)) => {
            refuse(&mut e, "command_line_arguments", why);
            Vec::new()
        }
        None => Vec::new(),
    };
    if !e.is_empty() {
        return Err(e);
    }
    // Ignis enforces a wall-clock limit: the wall limit when given, else
    // the CPU limit (with its extra time). A CPU limit is also checked
    // against the CPU time the run used (see `status`).
    let timeout_s = wall.or(cpu.map(|c| c + extra.unwrap_or(0.0)));
    let timeout_ms = timeout_s.map_or(d.timeout_ms, |s| (s * 1000.0).ceil() as u64);
    if timeout_ms > m.timeout_ms {
        // Only a CPU limit and its extra time together can get here.
        let max = m.timeout_ms as f64 / 1000.0;
        let why = format!("with cpu_extra_time, must be less than or equal to {max}");
        refuse(&mut e, "cpu_time_limit", &why);
        return Err(e);
    }
    let memory_mib = memory_kb.map_or(d.memory_mib.min(memory_max_mib), |kb| kb.div_ceil(1024));
    let max_processes = procs.map_or(d.max_processes, |p| p as u32);
    let max_output_kib = file_kb.unwrap_or(d.max_output_kib);
    let enc = if base64 {
        Encoding::Base64
    } else {
        Encoding::Utf8
    };
    let job = CreateJob {
        language: target.ignis.clone(),
        files: Some(vec![FileBody {
            name: target.source_file.clone(),
            content: source.unwrap_or_default(),
            encoding: enc,
        }]),
        code: None,
        stdin,
        stdin_encoding: enc,
        args,
        env: BTreeMap::new(),
        limits: Some(LimitsBody {
            timeout_ms: Some(timeout_ms),
            memory_mib: Some(memory_mib),
            max_output_kib: Some(max_output_kib),
            max_processes: Some(max_processes),
        }),
        webhook_url: None,
    };
    let expected_output = expected.map(|s| match base64 {
        // Checked above: this decodes.
        true => String::from_utf8_lossy(&STANDARD.decode(s).unwrap_or_default()).into_owned(),
        false => s,
    });
    let kept = Kept {
        language_id,
        expected_output,
        command_line_arguments: body.command_line_arguments,
        cpu_time_limit: cpu,
        cpu_extra_time: extra,
        wall_time_limit: timeout_ms as f64 / 1000.0,
        memory_limit: memory_mib * 1024,
        stack_limit: stack,
        max_processes_and_or_threads: max_processes,
        max_file_size: max_output_kib,
    };
    Ok((job, kept))
}

/// Splits a command line as a POSIX shell would, quotes and backslashes
/// included (no expansions): Judge0 hands `command_line_arguments` to one.
pub fn split_args(line: &str) -> Result<Vec<String>, &'static str> {
    let (mut args, mut cur, mut any) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                any = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("has an unterminated quote"),
                    }
                }
            }
            '"' => {
                any = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("has an unterminated quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("has an unterminated quote"),
                    }
                }
            }
            '\\' => {
                any = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if any {
                    args.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                any = true;
                cur.push(c);
            }
        }
    }
    if any {
        args.push(cur);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::split_args;

    #[test]
    fn arguments_split_as_a_shell_splits_them() {
        let ok = |s: &str| split_args(s).expect("valid");
        assert_eq!(ok("a  b"), ["a", "b"]);
        assert_eq!(ok(r#"'x y' "q\"z" a\ b ''"#), ["x y", "q\"z", "a b", ""]);
        assert!(ok("   ").is_empty());
        assert!(split_args("\"open").is_err());
    }
}
