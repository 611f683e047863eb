//! The files a guest reads while it starts, which its image stores
//! uncompressed.
//!
//! Under TCG the guest's LZ4 decompression runs emulated: a boot that read
//! its runtime (Python's 7 MB interpreter, the Go tool) through compressed
//! clusters spent about 3 % more CPU than one reading a flat ext4 image.
//! So the layer build runs what the agent runs before it says Ready (the
//! recipe's warm-up and version commands) under `strace`, in a chroot of
//! the layer over the base, and the layer's files those commands opened
//! are packed uncompressed (`mkfs.erofs --compress-hints`, cluster size 0).
//! The rest of the layer stays compressed; the base keeps a fixed list of
//! what every guest reads (see `pack::BASE_HOT`).

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::build::{BuildError, BuildHost};

/// A file larger than this stays compressed even when a start-up opens it:
/// such files (ICU's data, Node's and the JVM's shared libraries, Java's
/// module image) are read in small parts, and storing them whole would
/// cost far more disk than the boot saves.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Runs each of `commands` in a chroot of `root` under `strace`, with the
/// environment the agent gives them, and returns every absolute path one
/// of them opened or executed. A command that fails still counts for what
/// it opened (the agent goes on after a failed warm-up too). `logs` is a
/// directory outside `root` for strace's output.
pub fn profile(
    host: &dyn BuildHost,
    root: &Path,
    logs: &Path,
    commands: &[Vec<String>],
) -> Result<Vec<String>, BuildError> {
    std::fs::create_dir_all(logs)?;
    let mut opened = Vec::new();
    for (i, argv) in commands.iter().enumerate() {
        let log = logs.join(format!("strace-{i}.log"));
        // strace runs on the host (chroot is in /usr/sbin there); the
        // command gets the agent's environment from the tree's own `env`.
        let run = host.exec(
            Command::new("strace")
                .args(["-f", "-qq", "-e", "trace=open,openat,execve", "-o"])
                .arg(&log)
                .arg("chroot")
                .arg(root)
                .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp"])
                .args(argv)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null()),
            &format!("strace {argv:?}"),
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match run {
            // A command that failed still counts for what it opened.
            Err(e) if text.trim().is_empty() => return Err(e),
            _ => opened.extend(parse(&text)),
        }
    }
    opened.sort();
    opened.dedup();
    Ok(opened)
}

/// The absolute paths of the calls in a strace log that succeeded:
/// `openat(AT_FDCWD, "/usr/lib/x", O_RDONLY) = 3`, `execve("/bin/x", …) = 0`,
/// including calls strace split in two (`<unfinished ...>`, then
/// `<... openat resumed>) = 3` on a later line of the same process).
pub fn parse(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending: std::collections::HashMap<&str, String> = Default::default();
    for line in log.lines() {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let path = ["open(", "openat(", "execve("]
            .iter()
            .find_map(|c| line.find(c).map(|at| &line[at..]))
            .and_then(|call| call.split_once('"'))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(p, _)| p.to_owned());
        let path = match path {
            Some(p) if line.ends_with("<unfinished ...>") => {
                pending.insert(pid, p);
                continue;
            }
            Some(p) => p,
            None if line.contains(" resumed>") => match pending.remove(pid) {
                Some(p) => p,
                None => continue,
            },
            None => continue,
        };
        let ok = line
            .rsplit_once(") = ")
            .and_then(|(_, result)| result.split_whitespace().next())
            .is_some_and(|r| r.parse::<i64>().is_ok_and(|n| n >= 0));
        if ok && path.starts_with('/') && !path.contains('\\') {
            out.push(path);
        }
    }
    out
}

/// `path` as seen in a chroot of `root` with every symbolic link followed,
/// relative to `root`; `None` when it is not a regular file or leaves the
/// tree's links unresolved (loops, more than 40 links).
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = components(path);
    todo.reverse();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(root.join(&next)).ok()?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                cur = PathBuf::new();
            }
            let mut more = components(&target);
            more.reverse();
            todo.extend(more);
        } else {
            cur = next;
        }
    }
    std::fs::metadata(root.join(&cur))
        .ok()
        .filter(|m| m.is_file())
        .map(|_| cur)
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Of the files `opened` (resolved in `root`, the layer over the base),
/// those the layer tree itself holds as regular files of at most
/// [`MAX_FILE_BYTES`], as paths relative to the tree; sorted.
pub fn in_layer(root: &Path, layer: &Path, opened: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = opened
        .iter()
        .filter_map(|p| resolve(root, p))
        .filter(|rel| {
            std::fs::symlink_metadata(layer.join(rel))
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_FILE_BYTES)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A regular expression (POSIX extended, as mkfs.erofs reads its hints)
/// matching exactly `rel`; `None` for a path a hints line cannot hold
/// (whitespace splits its fields).
pub fn exact_pattern(rel: &Path) -> Option<String> {
    let s = rel.to_str()?;
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return None;
    }
    let mut out = String::from("^");
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_successful_absolute_opens_and_execs_count() {
        let log = r#"
101   execve("/usr/bin/python3", ["/usr/bin/python3", "-c", "0"], 0x7ff /* 2 vars */) = 0
101   openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
101   openat(AT_FDCWD, "/usr/lib/missing.so", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
101   openat(AT_FDCWD, "relative.txt", O_RDONLY) = 4
101   open("/usr/lib/python3.11/os.py", O_RDONLY) = 5
102   openat(AT_FDCWD, "/usr/lib/x86_64-linux-gnu/libm.so.6", O_RDONLY|O_CLOEXEC <unfinished ...>
102   <... openat resumed>) = 6
101   +++ exited with 0 +++
"#;
        assert_eq!(
            parse(log),
            [
                "/usr/bin/python3",
                "/etc/ld.so.cache",
                "/usr/lib/python3.11/os.py",
                "/usr/lib/x86_64-linux-gnu/libm.so.6"
            ]
        );
    }

    #[test]
    fn links_resolve_inside_the_tree_and_only_layer_files_are_kept() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tmp");
        let (root, layer) = (tmp.path().join("root"), tmp.path().join("layer"));
        for t in [&root, &layer] {
            std::fs::create_dir_all(t.join("usr/bin")).expect("mkdir");
            std::fs::create_dir_all(t.join("usr/lib")).expect("mkdir");
        }
        // The merged view: /lib -> usr/lib, python3 -> python3.11.
        symlink("usr/lib", root.join("lib")).expect("link");
        symlink("python3.11", root.join("usr/bin/python3")).expect("link");
        std::fs::write(root.join("usr/bin/python3.11"), b"elf").expect("write");
        std::fs::write(root.join("usr/lib/libc.so.6"), b"libc").expect("write");
        symlink("/etc/loop", root.join("loop")).expect("link");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        symlink("/loop", root.join("etc/loop")).expect("link");
        // Only the interpreter is the layer's own.
        std::fs::write(layer.join("usr/bin/python3.11"), b"elf").expect("write");

        assert_eq!(
            resolve(&root, "/lib/libc.so.6"),
            Some(PathBuf::from("usr/lib/libc.so.6"))
        );
        assert_eq!(resolve(&root, "/usr/bin"), None, "a directory");
        assert_eq!(resolve(&root, "/loop"), None, "a loop");
        let opened = ["/usr/bin/python3", "/lib/libc.so.6", "/nowhere"].map(String::from);
        assert_eq!(
            in_layer(&root, &layer, &opened),
            [PathBuf::from("usr/bin/python3.11")]
        );
    }

    #[test]
    fn patterns_match_the_path_alone() {
        assert_eq!(
            exact_pattern(Path::new("usr/lib/libc++.so.1")).as_deref(),
            Some(r"^usr/lib/libc\+\+\.so\.1$")
        );
        assert_eq!(exact_pattern(Path::new("usr/a b")), None);
    }
}
