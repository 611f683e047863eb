//! The build's caching and its failures, against a recording fake host:
//! which commands a build runs when nothing, the agent, or the packages
//! changed, and what a broken recipe leaves behind.

use std::cell::RefCell;
use std::path::PathBuf;

use super::*;
use crate::image::Catalog;

/// Records every command and plays its part on the file system: debootstrap
/// makes a minimal tree, mkfs.erofs an image with a superblock, a chroot
/// answers a version, and apt-get fails for a package named `nosuchpkg`.
#[derive(Default)]
struct Recording {
    ran: RefCell<Vec<String>>,
}

impl BuildHost for Recording {
    fn exec(&self, cmd: &mut Command, what: &str) -> Result<String, BuildError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let args: Vec<PathBuf> = cmd.get_args().map(PathBuf::from).collect();
        let words: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let label = match (program.as_str(), words.get(1).map(String::as_str)) {
            ("chroot", Some("/usr/bin/apt-get")) => format!("apt-get {}", words[4]),
            _ => program.clone(),
        };
        self.ran.borrow_mut().push(label);
        match program.as_str() {
            "debootstrap" => {
                // debootstrap ... SUITE TARGET MIRROR
                let target = &args[args.len() - 2];
                std::fs::create_dir_all(target.join("etc")).expect("tree");
                std::fs::write(target.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")
                    .expect("passwd");
                std::fs::write(target.join("etc/group"), "root:x:0:\n").expect("group");
                std::fs::create_dir_all(target.join("sbin")).expect("sbin");
                std::fs::create_dir_all(target.join("usr/sbin")).expect("usr/sbin");
                Ok(String::new())
            }
            "mkfs.erofs" => {
                // mkfs.erofs [options] OUT TREE
                let image = &args[args.len() - 2];
                let mut bytes = vec![0u8; 4096];
                bytes[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
                std::fs::write(image, bytes).expect("image");
                Ok(String::new())
            }
            "chroot" if words.iter().any(|w| w == "nosuchpkg") => Err(BuildError::Command {
                what: what.into(),
                detail: "exit status: 100: E: Unable to locate package nosuchpkg".into(),
            }),
            "chroot" => Ok("Fake 1.0\n".into()),
            _ => Ok(String::new()),
        }
    }
}

impl Recording {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.ran.borrow_mut())
    }
}

fn count(ran: &[String], what: &str) -> usize {
    ran.iter().filter(|c| *c == what).count()
}

fn recipe(name: &str, packages: &[&str]) -> Recipe {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "extensions": [name],
        "packages": packages,
        "source_file": format!("main.{name}"),
        "prepare": ["true"],
        "run": ["/bin/fake", "{entry}"],
        "version": ["/bin/fake", "--version"],
        "conformance": {"hello": "h", "echo_stdin": "e", "args": "a",
                        "runtime_error": "r", "version": "v"}
    }))
    .expect("recipe")
}

struct Setup {
    _tmp: tempfile::TempDir,
    opts: BuildOptions,
    agent: PathBuf,
    host: Recording,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tmp");
    let agent = tmp.path().join("agent");
    std::fs::write(&agent, b"agent v1").expect("agent");
    let opts = BuildOptions {
        images_dir: tmp.path().join("images"),
        cache_dir: tmp.path().join("cache"),
        agent: agent.clone(),
        mirror: "http://mirror.invalid/debian".into(),
    };
    Setup {
        _tmp: tmp,
        opts,
        agent,
        host: Recording::default(),
    }
}

#[test]
fn rebuilds_only_what_changed() {
    let s = setup();
    let (host, opts) = (&s.host, &s.opts);

    let base = build_base(host, opts).expect("base");
    let first = build_on(host, &recipe("fake", &["fakepkg"]), &base, opts).expect("first build");
    assert!(
        matches!(&first, Built::Fresh(m) if m.version == "Fake 1.0" && m.layer_bytes == 4096 && m.base == base.manifest.id)
    );
    let ran = host.take();
    assert_eq!(count(&ran, "debootstrap"), 1, "{ran:?}");
    assert_eq!(count(&ran, "apt-get install"), 1, "{ran:?}");
    assert_eq!(count(&ran, "mkfs.erofs"), 2, "base and layer: {ran:?}");
    let base_tree = opts
        .cache_dir
        .join("trees")
        .join(format!("base-{SUITE}-{}", base.manifest.tree_key));
    let passwd = std::fs::read_to_string(base_tree.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("runner:x:1000:1000"), "{passwd}");
    assert_eq!(
        std::fs::read(base_tree.join("sbin/ignis-agent")).expect("agent"),
        b"agent v1"
    );
    let c = Catalog::discover(&opts.images_dir);
    let img = c.language("fake").expect("the image is discovered");
    assert_eq!(img.drives()[0], base.path);

    // Same inputs: nothing runs at all.
    let base = build_base(host, opts).expect("base again");
    let again = build_on(host, &recipe("fake", &["fakepkg"]), &base, opts).expect("again");
    assert!(matches!(again, Built::UpToDate(_)));
    assert_eq!(host.take(), Vec::<String>::new());

    // A second language: its packages over the cached base tree, no
    // second debootstrap.
    build_on(host, &recipe("other", &["otherpkg"]), &base, opts).expect("other");
    let ran = host.take();
    assert_eq!(count(&ran, "debootstrap"), 0, "{ran:?}");
    assert_eq!(count(&ran, "apt-get install"), 1, "{ran:?}");

    // A new agent: the base is repacked, the layers are kept and name it.
    std::fs::write(&s.agent, b"agent v2").expect("agent");
    let new_base = build_base(host, opts).expect("new base");
    assert_ne!(new_base.manifest.id, base.manifest.id);
    let rebased = build_on(host, &recipe("fake", &["fakepkg"]), &new_base, opts).expect("rebase");
    assert!(matches!(&rebased, Built::UpToDate(m) if m.base == new_base.manifest.id));
    let ran = host.take();
    assert_eq!(ran, ["mkfs.erofs"], "only the base is packed again");
    assert_eq!(
        std::fs::read(base_tree.join("sbin/ignis-agent")).expect("agent"),
        b"agent v2"
    );
    // The old base is still named by "other" until it is rebuilt too.
    assert_eq!(
        prune_bases(&opts.images_dir, &new_base.manifest.id).expect("prune"),
        Vec::<String>::new()
    );
    build_on(host, &recipe("other", &["otherpkg"]), &new_base, opts).expect("rebase other");
    assert_eq!(
        prune_bases(&opts.images_dir, &new_base.manifest.id).expect("prune"),
        std::slice::from_ref(&base.manifest.id)
    );
    assert!(!base.path.exists());

    // Other packages: a new layer tree, still no debootstrap.
    host.take();
    build_on(host, &recipe("fake", &["fakepkg", "more"]), &new_base, opts).expect("packages");
    let ran = host.take();
    assert_eq!(count(&ran, "apt-get install"), 1, "{ran:?}");
    assert_eq!(count(&ran, "debootstrap"), 0, "{ran:?}");
}

#[test]
fn a_broken_recipe_names_itself_and_leaves_the_others_alone() {
    let s = setup();
    let (host, opts) = (&s.host, &s.opts);
    let base = build_base(host, opts).expect("base");
    build_on(host, &recipe("good", &["goodpkg"]), &base, opts).expect("good");
    let before = std::fs::read(opts.images_dir.join("good/manifest.json")).expect("manifest");

    let err = build_on(host, &recipe("good", &["nosuchpkg"]), &base, opts)
        .expect_err("an unknown package fails the build");
    assert!(
        err.to_string()
            .contains("Unable to locate package nosuchpkg"),
        "{err}"
    );
    // The working image of that language, and every other, is untouched.
    assert_eq!(
        std::fs::read(opts.images_dir.join("good/manifest.json")).expect("manifest"),
        before
    );
    let c = Catalog::discover(&opts.images_dir);
    assert!(c.language("good").is_ok(), "{:?}", c.problems);
    // The failed tree is not taken for a finished one next time.
    host.take();
    let _ = build_on(host, &recipe("good", &["nosuchpkg"]), &base, opts);
    assert_eq!(count(&host.take(), "apt-get install"), 2, "tried again");
}

#[test]
fn a_truncated_layer_is_rebuilt() {
    let s = setup();
    let (host, opts) = (&s.host, &s.opts);
    let base = build_base(host, opts).expect("base");
    build_on(host, &recipe("fake", &[]), &base, opts).expect("build");
    host.take();
    std::fs::write(opts.images_dir.join("fake").join(LAYER_FILE), b"short").expect("truncate");
    let r = build_on(host, &recipe("fake", &[]), &base, opts).expect("rebuild");
    assert!(matches!(r, Built::Fresh(_)));
    assert_eq!(count(&host.take(), "mkfs.erofs"), 1);
}

#[test]
fn recipes_with_missing_or_wrong_fields_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).expect("write");
        p
    };
    let ok = r#"
name = "lang"
extensions = ["l"]
packages = []
source_file = "main.l"
run = ["/bin/l", "{entry}"]
version = ["/bin/l", "-v"]
[conformance]
hello = "h"
echo_stdin = "e"
args = "a"
runtime_error = "r"
version = "v"
"#;
    read_recipe(&write("lang", ok)).expect("a sound recipe");
    let cases = [
        (
            "norun",
            ok.replace("run = [\"/bin/l\", \"{entry}\"]\n", "")
                .replace("\"lang\"", "\"norun\""),
            "missing field `run`",
        ),
        ("other", ok.to_owned(), "must match the file name"),
        ("base", ok.replace("\"lang\"", "\"base\""), "reserved"),
        (
            "noconf",
            ok.replace("\"lang\"", "\"noconf\"")
                .split("[conformance]")
                .next()
                .unwrap_or_default()
                .to_owned(),
            "missing field `conformance`",
        ),
        (
            "typo",
            ok.replace("\"lang\"", "\"typo\"")
                .replace("packages", "pakages"),
            "unknown field `pakages`",
        ),
        (
            "cc",
            format!(
                "{}\n[compile]\ncommand = [\"cc\"]\n",
                ok.replace("\"lang\"", "\"cc\"")
            ),
            "compile_error is missing",
        ),
    ];
    for (name, text, want) in cases {
        let path = write(name, &text);
        let err = read_recipe(&path).expect_err(name).to_string();
        assert!(err.contains(&format!("{name}.toml")), "{err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}

/// No recipe in the repository hands a file name to its compiler or
/// interpreter as a bare word: whatever the files are called (even a name
/// the checks would refuse), `{entry}` and `{files}` reach the command line
/// as `./name` or inside a path, never where they could be read as an
/// option. (`{entry_stem}`, Java's class name, is kept from starting with
/// `-` by the file name checks alone.)
#[test]
fn every_recipe_passes_file_names_as_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/languages");
    let files = recipe_files(&dir).expect("the recipes");
    assert!(files.len() >= 11, "{files:?}");
    for f in files {
        let r = read_recipe(&f).expect("a sound recipe");
        let ext = &r.extensions[0];
        let names = vec![format!("-x.{ext}"), format!("--help.{ext}")];
        let mut steps = vec![r.run.clone()];
        steps.extend(r.compile.iter().map(|c| c.command.clone()));
        for step in steps {
            for word in ignis_protocol::Recipe::expand(&step, &names, "/job/bin/program") {
                if word.contains("x.") || word.contains("help.") {
                    assert!(
                        word.starts_with("./") || word.starts_with('/'),
                        "{}: {word:?} in {step:?}",
                        r.name
                    );
                }
            }
        }
    }
}
