//! Packing a tree into a read-only, LZ4-compressed EROFS image, leaving out
//! what no program in the guest ever reads.

use std::path::Path;
use std::process::Command;

use super::build::{BuildError, BuildHost};

/// mkfs.erofs options every image is made with: LZ4HC at its highest level
/// in 4 KiB physical clusters, tails packed inline. Small clusters cost
/// about a tenth more bytes than 64 KiB ones, but a page the guest reads
/// decompresses only its own cluster: under TCG the guest's decompression
/// runs emulated, and a boot reads scattered pages of large files (the Go
/// toolchain, Python's shared library), which 64 KiB clusters made it
/// decompress many times over.
const MKFS_OPTIONS: [&str; 3] = ["-zlz4hc,12", "-C4096", "-Eztailpacking"];

/// Left out of every image, base or layer (regular expressions on paths
/// relative to the tree's root): documentation, manuals, translations,
/// package manager state and caches, logs, scratch space.
const COMMON: [&str; 10] = [
    "^usr/share/(doc|doc-base|man|info|locale|lintian|linda|bug|menu|bash-completion|zsh|fish|common-licenses|gtk-doc|help)(/|$)",
    "^var/lib/(apt|dpkg|ucf)(/|$)",
    "^var/cache/(apt|debconf|ldconfig|man)(/|$)",
    "^var/log/.",
    "^var/tmp/.",
    "^tmp/.",
    "^root/.",
    "^etc/(apt|dpkg)(/|$)",
    "^usr/sbin/policy-rc\\.d$",
    "^(run|var/run)/.",
];

/// Left out of the base only: the package manager and what only it uses.
/// Layers are built from the base tree, which keeps them.
const BASE_ONLY: [&str; 6] = [
    "^usr/bin/(apt|apt-.*|dpkg|dpkg-.*|debconf|debconf-.*|perl|perl5.*|update-alternatives)$",
    "^usr/(lib|share)/(apt|dpkg|debconf|perl5|perl)(/|$)",
    "^usr/lib/x86_64-linux-gnu/(perl-base|perl)(/|$)",
    "^usr/lib/x86_64-linux-gnu/libapt-(pkg|private)\\.so",
    "^usr/sbin/(dpkg-.*|update-passwd)$",
    "^usr/share/(perl5|keyrings|debian-archive-keyring)(/|$)",
];

/// Left out of layers of languages without a compile step: headers and
/// static libraries, which only a compiler reads.
const NOT_COMPILED: [&str; 2] = ["^usr/include(/|$)", "^usr/lib/.*\\.a$"];

/// What every guest reads while it starts, whatever its language, kept
/// uncompressed in the base (see `hot`): the agent, the dynamic loader,
/// the C and maths libraries, the C.UTF-8 locale.
const BASE_HOT: [&str; 3] = [
    "^sbin/ignis-agent$",
    "^usr/lib/x86_64-linux-gnu/(ld-linux-x86-64\\.so\\.2|libc\\.so\\.6|libm\\.so\\.6)$",
    "^usr/lib/locale/C\\.utf8/",
];

/// Which set of exclusions an image gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Base,
    Layer { compiled: bool },
}

impl Kind {
    pub fn excludes(self) -> Vec<&'static str> {
        let mut out: Vec<&str> = COMMON.to_vec();
        match self {
            Kind::Base => out.extend(BASE_ONLY),
            Kind::Layer { compiled: false } => out.extend(NOT_COMPILED),
            Kind::Layer { compiled: true } => {}
        }
        out
    }

    /// Files stored uncompressed whatever the profile finds.
    pub fn always_hot(self) -> &'static [&'static str] {
        match self {
            Kind::Base => &BASE_HOT,
            Kind::Layer { .. } => &[],
        }
    }

    /// Everything about packing that changes the image, for cache keys.
    /// (A layer's start-up files follow from its tree and recipe, which
    /// its key holds already.)
    pub fn fingerprint(self) -> String {
        format!(
            "{MKFS_OPTIONS:?} {:?} no-setid hot {:?} up to {}",
            self.excludes(),
            self.always_hot(),
            super::hot::MAX_FILE_BYTES
        )
    }
}

/// Packs `tree` into `out` (replaced if it exists). Returns its size.
/// No image carries a set-user-id or set-group-id file or directory: the
/// bits are cleared in the tree first (see [`strip_setid`]). Files matching
/// `hot` (regular expressions on paths relative to the tree), and the
/// kind's [`Kind::always_hot`], are stored uncompressed.
pub fn pack(
    host: &dyn BuildHost,
    tree: &Path,
    out: &Path,
    kind: Kind,
    hot: &[String],
) -> Result<u64, BuildError> {
    if out.exists() {
        std::fs::remove_file(out)?;
    }
    let stripped = strip_setid(tree)?;
    if !stripped.is_empty() {
        eprintln!(
            "image: cleared set-id bits of {} in {}",
            stripped
                .iter()
                .map(|p| p.strip_prefix(tree).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            tree.display()
        );
    }
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").args(MKFS_OPTIONS);
    for x in kind.excludes() {
        cmd.arg(format!("--exclude-regex={x}"));
    }
    // One `<physical cluster bytes> <pattern>` per line; 0 = uncompressed.
    let hints_file = out.with_extension("hints");
    let hints: String = kind
        .always_hot()
        .iter()
        .copied()
        .chain(hot.iter().map(String::as_str))
        .map(|p| format!("0 {p}\n"))
        .collect();
    if !hints.is_empty() {
        std::fs::write(&hints_file, hints)?;
        cmd.arg(format!("--compress-hints={}", hints_file.display()));
    }
    cmd.arg(out).arg(tree);
    let packed = host.exec(&mut cmd, "mkfs.erofs");
    let _ = std::fs::remove_file(&hints_file);
    packed?;
    Ok(std::fs::metadata(out)?.len())
}

/// Clears the set-user-id and set-group-id bits of every file and
/// directory under `root` (symbolic links are not followed), and returns
/// what it changed. Debian's `su`, `mount`, `passwd` and the like are
/// setuid root; a guest's programs have no business becoming root, so the
/// images carry none (and the guest mounts its root `nosuid` besides).
pub fn strip_setid(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o6000 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o1777))?;
            changed.push(path.clone());
        }
        if ft.is_dir() {
            for e in std::fs::read_dir(&path)? {
                todo.push(e?.path());
            }
        }
    }
    changed.sort();
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::RealHost;

    /// Packs a tree holding `paths` (as files) with the real mkfs.erofs and
    /// extracts it again; returns which of them survived.
    fn kept(kind: Kind, paths: &[&str]) -> Vec<String> {
        let tmp = tempfile::tempdir().expect("tmp");
        let tree = tmp.path().join("tree");
        for p in paths {
            let f = tree.join(p);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(&f, p.as_bytes()).expect("write");
        }
        let image = tmp.path().join("image.erofs");
        pack(&RealHost, &tree, &image, kind, &[])
            .expect("mkfs.erofs (erofs-utils; scripts/setup installs it)");
        let out = tmp.path().join("out");
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(&image)
            .output()
            .expect("fsck.erofs (erofs-utils)");
        assert!(st.status.success(), "{st:?}");
        paths
            .iter()
            .filter(|p| out.join(p).is_file())
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn hot_files_are_stored_uncompressed_and_read_back_the_same() {
        let tmp = tempfile::tempdir().expect("tmp");
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
        let text = "print('hello, world')\n".repeat(12_000);
        std::fs::write(tree.join("usr/bin/python3.11"), &text).expect("write");
        let size = |hot: &[String]| {
            let image = tmp.path().join("image.erofs");
            let kind = Kind::Layer { compiled: false };
            pack(&RealHost, &tree, &image, kind, hot).expect("mkfs.erofs (erofs-utils)")
        };
        let compressed = size(&[]);
        let pattern = super::super::hot::exact_pattern(Path::new("usr/bin/python3.11"));
        let plain = size(&[pattern.expect("a plain path")]);
        assert!(
            plain >= compressed + text.len() as u64 / 2,
            "{} bytes of text: {compressed} compressed, {plain} with it hot",
            text.len()
        );
        let out = tmp.path().join("out");
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(tmp.path().join("image.erofs"))
            .output()
            .expect("fsck.erofs (erofs-utils)");
        assert!(st.status.success(), "{st:?}");
        let back = std::fs::read_to_string(out.join("usr/bin/python3.11")).expect("read");
        assert!(back == text, "the hot file reads back changed");
        assert!(!tmp.path().join("image.hints").exists(), "hints file left");
    }

    #[test]
    fn set_id_bits_are_cleared_and_links_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::symlink_metadata(p)
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let tree = tmp.path().join("tree");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
        std::fs::create_dir_all(tree.join("var/mail")).expect("mkdir");
        std::fs::create_dir_all(tree.join("tmp")).expect("mkdir");
        for f in ["usr/bin/su", "usr/bin/wall", "usr/bin/ls"] {
            std::fs::write(tree.join(f), b"x").expect("write");
        }
        std::fs::write(&outside, b"x").expect("write");
        set(&tree.join("usr/bin/su"), 0o4755);
        set(&tree.join("usr/bin/wall"), 0o2755);
        set(&tree.join("usr/bin/ls"), 0o755);
        set(&tree.join("var/mail"), 0o2775);
        set(&tree.join("tmp"), 0o1777);
        set(&outside, 0o4755);
        std::os::unix::fs::symlink(&outside, tree.join("usr/bin/link")).expect("symlink");

        let changed = strip_setid(&tree).expect("strip");
        let rel: Vec<_> = changed
            .iter()
            .map(|p| p.strip_prefix(&tree).expect("inside").to_owned())
            .collect();
        assert_eq!(
            rel,
            ["usr/bin/su", "usr/bin/wall", "var/mail"].map(std::path::PathBuf::from)
        );
        assert_eq!(mode(&tree.join("usr/bin/su")), 0o755);
        assert_eq!(mode(&tree.join("usr/bin/wall")), 0o755);
        assert_eq!(mode(&tree.join("var/mail")), 0o775);
        assert_eq!(mode(&tree.join("tmp")), 0o1777, "sticky bits stay");
        assert_eq!(
            mode(&outside),
            0o4755,
            "a link's target outside is left alone"
        );
        assert!(strip_setid(&tree).expect("again").is_empty());
    }

    const EVERYWHERE_OUT: [&str; 8] = [
        "usr/share/doc/python3/copyright",
        "usr/share/man/man1/ls.1.gz",
        "usr/share/locale/de/LC_MESSAGES/coreutils.mo",
        "var/lib/dpkg/status",
        "var/lib/apt/lists/x_Packages",
        "var/cache/apt/pkgcache.bin",
        "var/log/dpkg.log",
        "tmp/leftover",
    ];
    const EVERYWHERE_IN: [&str; 4] = [
        "usr/lib/locale/C.utf8/LC_CTYPE",
        "usr/bin/python3",
        "usr/share/zoneinfo/UTC",
        "etc/passwd",
    ];

    #[test]
    fn docs_and_package_state_are_left_out_everywhere() {
        for kind in [Kind::Base, Kind::Layer { compiled: true }] {
            let all: Vec<&str> = EVERYWHERE_OUT
                .iter()
                .chain(&EVERYWHERE_IN)
                .copied()
                .collect();
            assert_eq!(kept(kind, &all), EVERYWHERE_IN, "{kind:?}");
        }
    }

    #[test]
    fn the_base_drops_the_package_manager_and_compilers_keep_headers() {
        let base = [
            "usr/bin/apt-get",
            "usr/bin/dpkg",
            "usr/bin/perl",
            "usr/lib/x86_64-linux-gnu/perl-base/strict.pm",
            "usr/bin/bash",
        ];
        assert_eq!(kept(Kind::Base, &base), ["usr/bin/bash"]);
        let dev = [
            "usr/include/stdio.h",
            "usr/lib/x86_64-linux-gnu/libc.a",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
        ];
        assert_eq!(
            kept(Kind::Layer { compiled: false }, &dev),
            ["usr/lib/x86_64-linux-gnu/libc.so.6"]
        );
        assert_eq!(kept(Kind::Layer { compiled: true }, &dev), dev);
    }
}
