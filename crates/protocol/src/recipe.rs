//! A language recipe: everything Ignis knows about a language, as data.
//!
//! The image build reads it from `images/languages/<name>.toml` and writes it
//! into the image as `/etc/ignis/recipe.json`, where the agent reads it. The
//! host only needs the parts that pick a language (name, extensions).
//!
//! Command words may use placeholders: `{entry}` (the first file), `{files}`
//! (every file, one word each) and `{binary}` (where a compiler must put the
//! program, and what the run command then runs).

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
    /// Prints the runtime's version.
    pub version: Vec<String>,
    /// Run at boot before the agent reports ready, to fill the page cache.
    #[serde(default)]
    pub warmup: Vec<Vec<String>>,
    /// Guest memory of a VM of this language.
    #[serde(default = "default_vm_memory")]
    pub vm_memory_mib: u64,
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
}

fn default_compile_memory() -> u64 {
    512
}

fn default_vm_memory() -> u64 {
    512
}

impl Recipe {
    /// Expands placeholders in `words` for a program made of `files`.
    pub fn expand(words: &[String], files: &[String], binary: &str) -> Vec<String> {
        let mut out = Vec::with_capacity(words.len() + files.len());
        for w in words {
            if w == "{files}" {
                out.extend(files.iter().cloned());
            } else {
                let entry = files.first().map(String::as_str).unwrap_or_default();
                out.push(w.replace("{entry}", entry).replace("{binary}", binary));
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
            ["go", "build", "-o", "/b/prog", "main.go", "util.go"]
        );
        let run = vec!["python3".to_string(), "{entry}".to_string()];
        assert_eq!(Recipe::expand(&run, &files, ""), ["python3", "main.go"]);
    }
}
