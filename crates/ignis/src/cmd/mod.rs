pub mod api;
pub mod bench;
pub mod bench_api;
pub mod bench_dist;
pub mod bench_native;
pub mod bench_table;
pub mod bench_util;
pub mod bench_vm;
pub mod images;
pub mod keys;
pub mod remote;
pub mod run;
pub mod serve;
pub mod worker;

/// Exit code when Ignis itself failed (BSD's EX_SOFTWARE).
pub const EXIT_INTERNAL: u8 = 70;

/// Where the recipes of this checkout live, unless `--recipes` says otherwise.
pub fn default_recipes_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/languages")
}

/// Where `scripts/build-agent` puts the static agent of this checkout.
pub fn default_agent_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/agent/ignis-agent")
}
