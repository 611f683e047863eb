//! What a program may bring besides its code: file names, arguments and
//! environment. Both sides check them: the agent because it writes the
//! names to disk and puts them and the arguments on command lines, the host
//! to give a clear error before booting a VM.
//!
//! A file name is a plain name: one path component of letters, digits,
//! `.`, `_` and `-`, starting with neither `.` nor `-`, without `..`. So no
//! name is a path, a hidden file, or something a compiler or interpreter
//! reads as an option — and the agent passes files as `./name` besides
//! (see [`crate::Recipe::expand`]).

use std::collections::{BTreeMap, HashSet};

use crate::File;

pub const FILE_NAME_MAX: usize = 128;
pub const FILES_MAX: usize = 64;
/// Arguments a program may be given, and the bytes of each.
pub const ARGS_MAX: usize = 256;
pub const ARG_BYTES_MAX: usize = 4096;
/// Environment variables a program may be given, and the bytes of each
/// `NAME=VALUE`.
pub const ENV_MAX: usize = 128;
pub const ENV_ENTRY_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    #[error("no files given")]
    NoFiles,
    #[error("too many files ({0}, at most {FILES_MAX})")]
    TooMany(usize),
    #[error("file name {0:?} is not allowed: use letters, digits, '.', '_' and '-', not starting with '.' or '-', without '..', at most {FILE_NAME_MAX} bytes")]
    Invalid(String),
    #[error("file name {0:?} is given twice")]
    Duplicate(String),
}

impl FileNameError {
    /// Where in a request the problem is, e.g. `files[2].name`, for an API
    /// error that names the field; `files` for the list as a whole.
    pub fn field(&self, files: &[File]) -> String {
        match self {
            FileNameError::Invalid(n) | FileNameError::Duplicate(n) => {
                // A duplicate is named at its second appearance.
                let nth = usize::from(matches!(self, FileNameError::Duplicate(_)));
                files
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| &f.name == n)
                    .nth(nth)
                    .map_or_else(|| "files".into(), |(i, _)| format!("files[{i}].name"))
            }
            FileNameError::NoFiles | FileNameError::TooMany(_) => "files".into(),
        }
    }
}

/// Whether `name` is a plain file name (see the module's documentation).
pub fn validate_file_name(name: &str) -> Result<(), FileNameError> {
    let ok = !name.is_empty()
        && name.len() <= FILE_NAME_MAX
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FileNameError::Invalid(name.to_owned()))
    }
}

pub fn validate_files(files: &[File]) -> Result<(), FileNameError> {
    if files.is_empty() {
        return Err(FileNameError::NoFiles);
    }
    if files.len() > FILES_MAX {
        return Err(FileNameError::TooMany(files.len()));
    }
    let mut seen = HashSet::new();
    for f in files {
        validate_file_name(&f.name)?;
        if !seen.insert(f.name.as_str()) {
            return Err(FileNameError::Duplicate(f.name.clone()));
        }
    }
    Ok(())
}

/// Why a program's arguments or environment are refused. Each names the
/// field it is about, as an API error shows it (`args[3]`, `env.NAME`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("args: {0} arguments, at most {ARGS_MAX}")]
    TooManyArgs(usize),
    #[error("args[{0}]: {1} bytes, at most {ARG_BYTES_MAX}")]
    ArgTooLong(usize, usize),
    #[error("args[{0}]: an argument cannot contain NUL")]
    ArgNul(usize),
    #[error("env: {0} variables, at most {ENV_MAX}")]
    TooManyEnv(usize),
    #[error("env.{0}: NAME=VALUE is {1} bytes, at most {ENV_ENTRY_BYTES_MAX}")]
    EnvTooLong(String, usize),
    #[error("env.{0}: not a valid NAME=VALUE (a name is not empty and has no '=' or NUL; a value has no NUL)")]
    EnvInvalid(String),
}

impl InputError {
    /// The field the error is about: `args`, `args[i]`, `env` or `env.NAME`.
    pub fn field(&self) -> String {
        match self {
            InputError::TooManyArgs(_) => "args".into(),
            InputError::ArgTooLong(i, _) | InputError::ArgNul(i) => format!("args[{i}]"),
            InputError::TooManyEnv(_) => "env".into(),
            InputError::EnvTooLong(k, _) | InputError::EnvInvalid(k) => format!("env.{k}"),
        }
    }
}

/// Checks the count and size of arguments and environment variables, and
/// that each can be put on a command line (no NUL, no `=` in a name).
pub fn validate_args_env(
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), InputError> {
    if args.len() > ARGS_MAX {
        return Err(InputError::TooManyArgs(args.len()));
    }
    for (i, a) in args.iter().enumerate() {
        if a.len() > ARG_BYTES_MAX {
            return Err(InputError::ArgTooLong(i, a.len()));
        }
        if a.contains('\0') {
            return Err(InputError::ArgNul(i));
        }
    }
    if env.len() > ENV_MAX {
        return Err(InputError::TooManyEnv(env.len()));
    }
    for (k, v) in env {
        // A name as shown in an error: bounded, and printable.
        let shown = || {
            k.chars()
                .take(64)
                .collect::<String>()
                .escape_debug()
                .to_string()
        };
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(InputError::EnvInvalid(shown()));
        }
        let len = k.len() + 1 + v.len();
        if len > ENV_ENTRY_BYTES_MAX {
            return Err(InputError::EnvTooLong(shown(), len));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
