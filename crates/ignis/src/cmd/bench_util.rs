//! What every part of `ignis bench` shares: summaries of samples, a
//! measurement that may be missing, timing a subprocess, a scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

/// What every hello world prints.
pub const EXPECTED: &[u8] = b"hello, world\n";

/// Samples of one measurement (milliseconds or MiB, as its name says).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    /// `None` for no samples.
    pub fn of(samples: Vec<f64>) -> Option<Stats> {
        // Hundredths are already below the noise.
        let samples: Vec<f64> = samples
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect();
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Some(Stats {
            median,
            min: s[0],
            max: s[n - 1],
            samples,
        })
    }

    /// Like [`Stats::of`], for a measurement that must have samples.
    pub fn required(samples: Vec<f64>, what: &str) -> anyhow::Result<Stats> {
        Stats::of(samples).with_context(|| format!("no {what} was measured"))
    }
}

/// How many times faster `fast` is than `slow`, by their medians, to two
/// decimals; `None` when `fast` is zero.
pub fn speedup(slow: &Stats, fast: &Stats) -> Option<f64> {
    (fast.median > 0.0).then(|| (slow.median / fast.median * 100.0).round() / 100.0)
}

/// A measurement, or why there is none (a tool missing, a step failing):
/// the rest of the benchmark goes on without it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Maybe<T> {
    Measured(T),
    Unavailable { unavailable: String },
}

impl<T> Maybe<T> {
    pub fn unavailable(why: impl Into<String>) -> Maybe<T> {
        Maybe::Unavailable {
            unavailable: why.into(),
        }
    }

    pub fn from_result(r: anyhow::Result<T>) -> Maybe<T> {
        r.map_or_else(|e| Maybe::unavailable(format!("{e:#}")), Maybe::Measured)
    }

    pub fn measured(&self) -> Option<&T> {
        match self {
            Maybe::Measured(t) => Some(t),
            Maybe::Unavailable { .. } => None,
        }
    }
}

/// Samples `f` `runs` times; the first failure makes the whole measurement
/// unavailable, with its reason.
pub fn sample(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> Maybe<Stats> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        match f() {
            Ok(ms) => v.push(ms),
            Err(e) => return Maybe::unavailable(format!("{e:#}")),
        }
    }
    Stats::of(v).map_or_else(|| Maybe::unavailable("no runs"), Maybe::Measured)
}

/// Runs `cmd` to completion with stdout and stderr to pipes and returns its
/// wall-clock time in ms; the program must succeed and print the hello line.
pub fn time_checked(cmd: &mut Command, what: &str) -> anyhow::Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() || out.stdout != EXPECTED {
        bail!(
            "{what} did not print the hello line ({}): stdout {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// Output of a short command, or why it could not run.
pub fn capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text.trim().to_owned())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            text.trim()
        ))
    }
}

/// Where `name` is on PATH, if it is there and executable.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A scratch directory for the programs, removed at the end.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn create() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("ignis-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        let s = Stats::of(vec![3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(vec![4.0, 1.0, 2.0, 3.0]).expect("samples");
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(Vec::new()).is_none());
    }

    #[test]
    fn speedup_is_slow_over_fast() {
        let slow = Stats::of(vec![1300.0]).expect("samples");
        let fast = Stats::of(vec![100.0]).expect("samples");
        assert_eq!(speedup(&slow, &fast), Some(13.0));
        let zero = Stats::of(vec![0.0]).expect("samples");
        assert_eq!(speedup(&slow, &zero), None);
    }

    #[test]
    fn finds_commands_on_path() {
        assert!(on_path("sh").is_some());
        assert!(on_path("ignis-no-such-command").is_none());
    }
}
