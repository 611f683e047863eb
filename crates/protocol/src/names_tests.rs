//! File name, argument and environment rules, by example and by
//! generated input (proptest).

use proptest::prelude::*;

use super::*;

fn f(n: &str) -> File {
    File {
        name: n.into(),
        content: vec![],
    }
}

#[test]
fn path_and_option_tricks_are_refused() {
    for bad in [
        "",
        ".",
        "..",
        ".env",
        "a/b",
        "../x",
        "a\0b",
        "x y",
        "é.py",
        "-x.py",
        "--help.py",
        "-",
        "a..b",
        "x\n.py",
        "a\\b",
    ] {
        assert!(validate_file_name(bad).is_err(), "{bad:?} passed");
    }
    for good in ["main.py", "util_2.go", "a-b.c", "x-y.py", "Main.java", "_a"] {
        assert!(validate_file_name(good).is_ok(), "{good:?} failed");
    }
    assert!(validate_file_name(&"a".repeat(FILE_NAME_MAX)).is_ok());
    assert!(validate_file_name(&"a".repeat(FILE_NAME_MAX + 1)).is_err());
}

#[test]
fn duplicates_are_refused_and_named_where_they_repeat() {
    let files = [f("a.py"), f("b.py"), f("a.py")];
    let e = validate_files(&files).expect_err("duplicate");
    assert_eq!(e, FileNameError::Duplicate("a.py".into()));
    assert_eq!(e.field(&files), "files[2].name");
    assert_eq!(validate_files(&[]), Err(FileNameError::NoFiles));
    let files = [f("a.py"), f("-b.py")];
    assert_eq!(
        validate_files(&files).expect_err("bad").field(&files),
        "files[1].name"
    );
}

#[test]
fn args_and_env_are_bounded_and_named() {
    let env = BTreeMap::new();
    let many = vec![String::new(); ARGS_MAX + 1];
    assert_eq!(
        validate_args_env(&many, &env).expect_err("count").field(),
        "args"
    );
    let long = vec!["x".into(), "y".repeat(ARG_BYTES_MAX + 1)];
    assert_eq!(
        validate_args_env(&long, &env).expect_err("size").field(),
        "args[1]"
    );
    let nul = vec!["a\0".to_string()];
    assert_eq!(
        validate_args_env(&nul, &env).expect_err("nul").field(),
        "args[0]"
    );
    let big = BTreeMap::from([("K".to_string(), "v".repeat(ENV_ENTRY_BYTES_MAX))]);
    assert_eq!(
        validate_args_env(&[], &big).expect_err("size").field(),
        "env.K"
    );
    let bad = BTreeMap::from([("A=B".to_string(), String::new())]);
    assert_eq!(
        validate_args_env(&[], &bad).expect_err("=").field(),
        "env.A=B"
    );
    let ok_env = BTreeMap::from([("K".to_string(), "v".repeat(100))]);
    let ok_args = vec!["-dash".to_string(), "with space".to_string()];
    assert_eq!(validate_args_env(&ok_args, &ok_env), Ok(()));
}

/// What an accepted name must be, stated independently of the validator.
fn plain(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= FILE_NAME_MAX
        && b[0] != b'-'
        && b[0] != b'.'
        && !name.contains("..")
        && !name.contains('/')
        && !b.iter().any(|c| c.is_ascii_control() || *c >= 0x80)
}

proptest! {
    /// Any string at all: no panic, and whatever passes is plain.
    #[test]
    fn arbitrary_names_never_panic_and_accepted_ones_are_plain(name in any::<String>()) {
        if validate_file_name(&name).is_ok() {
            prop_assert!(plain(&name), "{name:?} accepted");
        }
    }

    /// Names built from the risky characters, where mistakes hide.
    #[test]
    fn names_of_risky_characters_are_judged_by_the_rules(
        name in "[-./a\\x00\\n_é ]{0,12}",
    ) {
        let accepted = validate_file_name(&name).is_ok();
        let expected = plain(&name)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        prop_assert_eq!(accepted, expected, "{:?}", name);
    }

    /// Every plain name of the allowed characters is accepted.
    #[test]
    fn plain_names_are_accepted(name in "[A-Za-z0-9_][A-Za-z0-9_-]{0,60}(\\.[A-Za-z0-9_-]{1,8})?") {
        prop_assert!(validate_file_name(&name).is_ok(), "{:?}", name);
    }

    /// Any list of files: no panic; accepted lists are of plain, distinct names.
    #[test]
    fn arbitrary_file_lists_never_panic(names in proptest::collection::vec(any::<String>(), 0..8)) {
        let files: Vec<File> = names.iter().map(|n| f(n)).collect();
        if validate_files(&files).is_ok() {
            let distinct: HashSet<&String> = names.iter().collect();
            prop_assert_eq!(distinct.len(), names.len());
            prop_assert!(names.iter().all(|n| plain(n)));
        } else if let Err(e) = validate_files(&files) {
            prop_assert!(e.field(&files).starts_with("files"));
        }
    }

    /// Arguments and environment: no panic; accepted ones are within bounds.
    #[test]
    fn arbitrary_args_and_env_never_panic(
        args in proptest::collection::vec(any::<String>(), 0..4),
        env in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
    ) {
        match validate_args_env(&args, &env) {
            Ok(()) => {
                prop_assert!(args.iter().all(|a| !a.contains('\0') && a.len() <= ARG_BYTES_MAX));
                prop_assert!(env.iter().all(|(k, v)| !k.is_empty() && !k.contains('=') && !v.contains('\0')));
            }
            Err(e) => prop_assert!(e.field().starts_with("args") || e.field().starts_with("env")),
        }
    }
}
