//! Request bodies as typed structs, and their validation into what the rest
//! of the server works with. Nothing past this file sees unchecked input.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ignis_protocol::{validate_args_env, validate_files, File, InputError, Limits, RunRequest};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use crate::config::ServerConfig;
pub use crate::job::NewJob;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A language from `GET /v1/languages`.
    pub language: String,
    /// The program's files; the first is the entry point. Give this or `code`.
    pub files: Option<Vec<FileBody>>,
    /// A one-file program, named as the language's default source file.
    pub code: Option<String>,
    pub stdin: Option<String>,
    #[serde(default)]
    pub stdin_encoding: Encoding,
    #[serde(default)]
    pub args: Vec<String>,
    /// The program's whole environment (empty when absent).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub limits: Option<LimitsBody>,
    /// Receives the finished job as a signed POST.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    pub name: String,
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
}

/// How bytes travel in JSON: as UTF-8 text, or base64 of the exact bytes.
/// For files and stdin in a submission, and for a job's stdout and stderr
/// (`?encoding=` of `GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub max_output_kib: Option<u64>,
    pub max_processes: Option<u32>,
}

fn decode(what: &str, s: String, enc: Encoding) -> Result<Vec<u8>, Problem> {
    match enc {
        Encoding::Utf8 => Ok(s.into_bytes()),
        Encoding::Base64 => STANDARD.decode(s.as_bytes()).map_err(|e| {
            Problem::unprocessable(
                "invalid-encoding",
                format!("{what} is not valid base64: {e}"),
            )
        }),
    }
}

fn check_limit<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, Problem> {
    let v = v.unwrap_or(default);
    if v < min {
        return Err(Problem::unprocessable(
            "limit-too-low",
            format!("limits.{name} is {v}; it must be at least {min}"),
        ));
    }
    if v > max {
        return Err(Problem::unprocessable(
            "limit-exceeded",
            format!("limits.{name} is {v}; this server allows at most {max}"),
        ));
    }
    Ok(v)
}

/// Bounded count and size of arguments and environment, each usable on a
/// command line; the problem names the field (`args[3]`, `env.NAME`).
pub fn check_args_env(args: &[String], env: &BTreeMap<String, String>) -> Result<(), Problem> {
    validate_args_env(args, env).map_err(|e| {
        let slug = match e {
            InputError::TooManyArgs(_) | InputError::ArgTooLong(..) | InputError::ArgNul(_) => {
                "invalid-args"
            }
            _ => "invalid-env",
        };
        Problem::unprocessable(slug, e.to_string())
    })
}

impl CreateJob {
    /// `source_file` and `vm_memory_mib` come from the language's image.
    pub fn validate(
        self,
        cfg: &ServerConfig,
        source_file: &str,
        vm_memory_mib: u64,
    ) -> Result<NewJob, Problem> {
        let files = match (self.files, self.code) {
            (Some(files), None) => files
                .into_iter()
                .map(|f| {
                    let content = decode(&format!("file {:?}", f.name), f.content, f.encoding)?;
                    Ok(File {
                        name: f.name,
                        content,
                    })
                })
                .collect::<Result<Vec<_>, Problem>>()?,
            (None, Some(code)) => vec![File {
                name: source_file.to_owned(),
                content: code.into_bytes(),
            }],
            _ => {
                return Err(Problem::unprocessable(
                    "invalid-request",
                    "give exactly one of `files` and `code`",
                ))
            }
        };
        validate_files(&files).map_err(|e| {
            Problem::unprocessable("invalid-file", format!("{}: {e}", e.field(&files)))
        })?;
        let code_bytes: usize = files.iter().map(|f| f.content.len()).sum();
        if code_bytes > cfg.maxima.code_bytes {
            return Err(Problem::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "code-too-large",
                "Code too large",
                format!(
                    "the files hold {code_bytes} bytes; at most {} are accepted",
                    cfg.maxima.code_bytes
                ),
            ));
        }
        let stdin = match self.stdin {
            Some(s) => decode("stdin", s, self.stdin_encoding)?,
            None => Vec::new(),
        };
        if stdin.len() > cfg.maxima.stdin_bytes {
            return Err(Problem::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "stdin-too-large",
                "Input too large",
                format!(
                    "stdin holds {} bytes; at most {} are accepted",
                    stdin.len(),
                    cfg.maxima.stdin_bytes
                ),
            ));
        }
        check_args_env(&self.args, &self.env)?;
        let l = self.limits.unwrap_or_default();
        let (d, m) = (cfg.defaults, cfg.maxima);
        // The guest needs room for its own kernel and agent beside the program.
        let memory_max = m.memory_mib.min(vm_memory_mib.saturating_sub(64));
        let limits = Limits {
            timeout_ms: check_limit("timeout_ms", l.timeout_ms, d.timeout_ms, 1, m.timeout_ms)?,
            memory_mib: check_limit(
                "memory_mib",
                l.memory_mib,
                d.memory_mib.min(memory_max),
                16,
                memory_max,
            )?,
            max_output_kib: check_limit(
                "max_output_kib",
                l.max_output_kib,
                d.max_output_kib,
                1,
                m.max_output_kib,
            )?,
            max_processes: check_limit(
                "max_processes",
                l.max_processes,
                d.max_processes,
                1,
                m.max_processes,
            )?,
            compile_timeout_ms: d.compile_timeout_ms,
        };
        let webhook_url = match self.webhook_url {
            Some(u) => Some(
                crate::webhook::check_url(&u, cfg.allow_private_webhooks)
                    .map_err(|e| Problem::unprocessable("webhook-refused", e.to_string()))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(NewJob {
            language: self.language,
            request: RunRequest {
                files,
                stdin,
                args: self.args,
                env: self.env,
                limits,
            },
            webhook_url,
            compat: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServerConfig {
        ServerConfig::new("/nonexistent".into())
    }

    fn body(json: serde_json::Value) -> Result<NewJob, Problem> {
        let b: CreateJob =
            serde_json::from_value(json).map_err(|e| Problem::bad_request("x", e.to_string()))?;
        b.validate(&cfg(), "main.py", 512)
    }

    #[test]
    fn code_becomes_the_default_file() {
        let j = body(serde_json::json!({"language": "python", "code": "print(1)"})).expect("valid");
        assert_eq!(j.request.files[0].name, "main.py");
        assert_eq!(j.request.limits.timeout_ms, cfg().defaults.timeout_ms);
    }

    #[test]
    fn limits_above_the_maximum_are_refused_not_clamped() {
        let p = body(serde_json::json!({"language": "python", "code": "", "limits": {"timeout_ms": 10_000_000}}))
            .expect_err("too long");
        assert_eq!(p.status, 422);
        assert!(p.kind.ends_with("limit-exceeded"));
        let p = body(
            serde_json::json!({"language": "python", "code": "", "limits": {"memory_mib": 500}}),
        )
        .expect_err("more than the VM minus headroom");
        assert!(p.detail.contains("at most 448"), "{}", p.detail);
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        for (json, slug) in [
            (serde_json::json!({"language": "python"}), "invalid-request"),
            (
                serde_json::json!({"language": "python", "code": "", "files": []}),
                "invalid-request",
            ),
            (
                serde_json::json!({"language": "python", "files": [{"name": "../x", "content": ""}]}),
                "invalid-file",
            ),
            (
                serde_json::json!({"language": "python", "files": [{"name": "a.py", "content": "%%", "encoding": "base64"}]}),
                "invalid-encoding",
            ),
            (
                serde_json::json!({"language": "python", "code": "", "env": {"A=B": "c"}}),
                "invalid-env",
            ),
            (
                serde_json::json!({"language": "python", "files": [{"name": "-x.py", "content": ""}]}),
                "invalid-file",
            ),
            (
                serde_json::json!({"language": "python", "code": "", "args": vec!["a"; 257]}),
                "invalid-args",
            ),
            (
                serde_json::json!({"language": "python", "code": "", "webhook_url": "http://127.0.0.1/x"}),
                "webhook-refused",
            ),
        ] {
            let p = body(json.clone()).expect_err("refused");
            assert!(p.kind.ends_with(slug), "{json}: {} {}", p.kind, p.detail);
        }
        let p = body(serde_json::json!({"language": "python", "files": [
            {"name": "a.py", "content": ""}, {"name": "--help.py", "content": ""}]}))
        .expect_err("an option-like name");
        assert_eq!(p.status, 422);
        assert!(p.detail.starts_with("files[1].name: "), "{}", p.detail);
        let p = body(
            serde_json::json!({"language": "python", "code": "", "args": ["ok", "x".repeat(5000)]}),
        )
        .expect_err("a long argument");
        assert!(p.detail.starts_with("args[1]: "), "{}", p.detail);
        let p = body(
            serde_json::json!({"language": "python", "code": "", "env": {"K": "v".repeat(5000)}}),
        )
        .expect_err("a long variable");
        assert!(p.detail.starts_with("env.K: "), "{}", p.detail);
        assert!(serde_json::from_value::<CreateJob>(
            serde_json::json!({"language": "python", "code": "", "extra": 1})
        )
        .is_err());
    }
}

#[cfg(test)]
#[path = "parsed_props.rs"]
mod props;
