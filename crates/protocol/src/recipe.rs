//! A language recipe: everything Ignis knows about a language, as data.
//!
//! The image build reads it from `images/languages/<name>.toml` and writes it
//! into the image as `/etc/ignis/recipe.json`, where the agent reads it. The
//! host only needs the parts that pick a language (name, extensions).
//!
//! Command words may use placeholders: `{entry}` (the first file),
//! `{entry_stem}` (its name without the extension, e.g. a Java class),
//! `{files}` (every file, one word each) and `{binary}` (where a compiler
//! must put the program, and what the run command then runs).
//!
//! A recipe also carries what the host needs to check and measure the
//! language without knowing it: small conformance programs that every image
//! must pass (`[conformance]`), and how the host runs the same hello world
//! natively for `ignis bench` (`[native]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    /// File extensions (without the dot) that select this language.
    pub extensions: Vec<String>,
    /// Debian bookworm packages installed into the image.
    pub packages: Vec<String>,
    /// The name given to a program submitted as bare code.
    pub source_file: String,
    /// Shell lines run inside the image at build time (e.g. to warm a cache).
    #[serde(default)]
    pub prepare: Vec<String>,
    #[serde(default)]
    pub compile: Option<CompileStep>,
    pub run: Vec<String>,
    /// Prints the runtime's version; its first line is kept.
    pub version: Vec<String>,
    /// Run at boot before the agent reports ready, to fill the page cache.
    #[serde(default)]
    pub warmup: Vec<Vec<String>>,
    /// Guest memory of a VM of this language.
    #[serde(default = "default_vm_memory")]
    pub vm_memory_mib: u64,
    pub conformance: Conformance,
    /// The host's own toolchain, for `ignis bench`; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<Native>,
}

/// Programs every image of the language must pass, each a complete source
/// file named `source_file`. What each must do is fixed, so one test runs
/// them for every language: see [`Conformance::STDIN`] and [`Conformance::ARGS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conformance {
    /// Prints `hello, world` and a newline, and nothing else.
    pub hello: String,
    /// Copies its standard input to its standard output, byte for byte.
    pub echo_stdin: String,
    /// Prints each of its arguments on a line of its own.
    pub args: String,
    /// Exits with a non-zero status (an uncaught error, a panic).
    pub runtime_error: String,
    /// Fails to compile; required exactly when the language has a compile step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_error: Option<String>,
    /// Prints the version of the runtime (or compiler) it runs on, a part
    /// of what the recipe's `version` command says, e.g. `3.11.2`.
    pub version: String,
}

impl Conformance {
    /// What `echo_stdin` is fed, and must print back.
    pub const STDIN: &'static str = "one line\n  spaced  line\nünïcödé ✓\nno newline at the end";
    /// What `args` is run with, and must print one per line.
    pub const ARGS: [&'static str; 4] = ["first", "with space", "-dash", "ünï"];
}

/// How the host runs the hello world without a VM, for comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Native {
    /// Builds `{files}` into `{binary}` (compiled languages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Vec<String>>,
    /// Runs the program: `{entry}` or `{binary}`.
    pub run: Vec<String>,
    /// Prints the host toolchain's version.
    pub version: Vec<String>,
    /// Environment of the build and the run, beside the host's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Starts a line comment: a timed build appends one that is new every
    /// time, so that no build is answered from a compiler's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileStep {
    pub command: Vec<String>,
    /// The compiler's environment (the program's own starts empty).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Compilers need more than most programs; the step gets at least this.
    #[serde(default = "default_compile_memory")]
    pub memory_mib: u64,
    /// The least time the step gets, in milliseconds, whatever the request
    /// says: some compilers need far more than others (a JVM or tsc starts
    /// slowly without hardware virtualization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A file name as a command-line word that cannot be an option: `./name`,
/// unless it already is an absolute or `./` path.
fn as_path(name: &str) -> String {
    if name.is_empty() || name.starts_with('/') || name.starts_with("./") {
        name.to_owned()
    } else {
        format!("./{name}")
    }
}

fn default_compile_memory() -> u64 {
    512
}

fn default_vm_memory() -> u64 {
    512
}

/// What a version command's output says, as Ignis keeps it: the first
/// non-empty line, trimmed, at most 200 characters.
pub fn version_line(output: &str) -> String {
    output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

impl Recipe {
    /// Expands placeholders in `words` for a program made of `files`.
    ///
    /// `{entry}` and `{files}` become paths, `./name` for a relative name,
    /// so that no file name is ever read as an option by the compiler or
    /// interpreter, whatever it is called (file names are checked as well:
    /// see [`crate::validate_file_name`]). `{entry_stem}` stays a bare name
    /// (a Java class), which a plain name never lets start with `-`.
    pub fn expand(words: &[String], files: &[String], binary: &str) -> Vec<String> {
        let entry = files.first().map(String::as_str).unwrap_or_default();
        let stem = entry.rsplit_once('.').map_or(entry, |(stem, _)| stem);
        let entry_path = as_path(entry);
        let mut out = Vec::with_capacity(words.len() + files.len());
        for w in words {
            if w == "{files}" {
                out.extend(files.iter().map(|f| as_path(f)));
            } else {
                out.push(
                    w.replace("{entry_stem}", stem)
                        .replace("{entry}", &entry_path)
                        .replace("{binary}", binary),
                );
            }
        }
        out
    }

    /// What is wrong with this recipe beyond its syntax, if anything: the
    /// fields a build cannot do without, and conformance programs that do
    /// not fit the language's steps.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (field, empty) in [
            ("name", self.name.is_empty()),
            ("extensions", self.extensions.is_empty()),
            ("run", self.run.is_empty()),
            ("version", self.version.is_empty()),
            (
                "conformance.hello",
                self.conformance.hello.trim().is_empty(),
            ),
        ] {
            if empty {
                out.push(format!("{field} must not be empty"));
            }
        }
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || self.name.len() > 32
        {
            out.push(format!(
                "name {:?}: lower-case letters, digits and dashes only",
                self.name
            ));
        }
        if let Some(step) = &self.compile {
            if step.command.is_empty() {
                out.push("compile.command must not be empty".into());
            }
        }
        match (&self.compile, &self.conformance.compile_error) {
            (Some(_), None) => out.push(
                "conformance.compile_error is missing: the language has a compile step".into(),
            ),
            (None, Some(_)) => out.push(
                "conformance.compile_error is set, but the language has no compile step".into(),
            ),
            _ => {}
        }
        if let Some(n) = &self.native {
            if n.run.is_empty() || n.version.is_empty() {
                out.push("native.run and native.version must not be empty".into());
            }
            if n.build.is_some() && n.line_comment.is_none() {
                out.push("native.line_comment is needed with native.build".into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand() {
        let words: Vec<String> = ["go", "build", "-o", "{binary}", "{files}"]
            .map(String::from)
            .to_vec();
        let files = vec!["main.go".to_string(), "util.go".to_string()];
        assert_eq!(
            Recipe::expand(&words, &files, "/b/prog"),
            ["go", "build", "-o", "/b/prog", "./main.go", "./util.go"]
        );
        let run = vec!["python3".to_string(), "{entry}".to_string()];
        assert_eq!(Recipe::expand(&run, &files, ""), ["python3", "./main.go"]);
        // A name that looks like an option stays a path.
        assert_eq!(
            Recipe::expand(&run, &["-x.py".to_string()], ""),
            ["python3", "./-x.py"]
        );
        assert_eq!(
            Recipe::expand(&run, &["/abs/x.py".to_string()], ""),
            ["python3", "/abs/x.py"]
        );
        let java: Vec<String> = [
            "-cp",
            "{binary}",
            "{entry_stem}",
            "{binary}/{entry_stem}.js",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            Recipe::expand(&java, &["Main.java".to_string()], "/b/p"),
            ["-cp", "/b/p", "Main", "/b/p/Main.js"]
        );
    }

    fn minimal() -> Recipe {
        serde_json::from_value(serde_json::json!({
            "name": "lang",
            "extensions": ["l"],
            "packages": [],
            "source_file": "main.l",
            "run": ["/bin/l", "{entry}"],
            "version": ["/bin/l", "-v"],
            "conformance": {
                "hello": "hello", "echo_stdin": "cat", "args": "args",
                "runtime_error": "die", "version": "v"
            }
        }))
        .expect("a minimal recipe")
    }

    #[test]
    fn a_sound_recipe_has_no_problems() {
        assert_eq!(minimal().problems(), Vec::<String>::new());
    }

    #[test]
    fn problems_are_named() {
        let mut r = minimal();
        r.run.clear();
        r.name = "Bad Name".into();
        r.compile = Some(CompileStep {
            command: vec!["cc".into()],
            env: BTreeMap::new(),
            memory_mib: 512,
            timeout_ms: None,
        });
        let p = r.problems().join("; ");
        assert!(p.contains("run must not be empty"), "{p}");
        assert!(p.contains("lower-case"), "{p}");
        assert!(p.contains("conformance.compile_error is missing"), "{p}");
    }
}
