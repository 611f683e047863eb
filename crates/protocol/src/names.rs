//! File names a program may bring. Both sides check them: the agent because it
//! writes them to disk, the host to give a clear error before booting a VM.

use std::collections::HashSet;

use crate::File;

pub const FILE_NAME_MAX: usize = 128;
pub const FILES_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    #[error("no files given")]
    NoFiles,
    #[error("too many files ({0}, at most {FILES_MAX})")]
    TooMany(usize),
    #[error("file name {0:?} is not allowed: use letters, digits, '.', '_' and '-', not starting with '.', at most {FILE_NAME_MAX} characters")]
    Invalid(String),
    #[error("file name {0:?} is given twice")]
    Duplicate(String),
}

/// A file name is a single path component of safe characters.
pub fn validate_file_name(name: &str) -> Result<(), FileNameError> {
    let ok = !name.is_empty()
        && name.len() <= FILE_NAME_MAX
        && !name.starts_with('.')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_refused() {
        for bad in ["", "..", ".env", "a/b", "../x", "a\0b", "x y", "é.py"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?} passed");
        }
        for good in ["main.py", "util_2.go", "a-b.c"] {
            assert!(validate_file_name(good).is_ok(), "{good:?} failed");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let f = |n: &str| File {
            name: n.into(),
            content: vec![],
        };
        assert_eq!(
            validate_files(&[f("a.py"), f("a.py")]),
            Err(FileNameError::Duplicate("a.py".into()))
        );
        assert_eq!(validate_files(&[]), Err(FileNameError::NoFiles));
    }
}
