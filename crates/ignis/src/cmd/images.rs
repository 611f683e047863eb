//! `ignis images build|snapshot|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use ignis_vmm::image::build::{self, BuildOptions, Built};
use ignis_vmm::image::Catalog;
use ignis_vmm::paths::Paths;
use ignis_vmm::snapshot::SnapshotStore;
use ignis_vmm::Launcher;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build language images (all recipes when none is named). Cached: an
    /// image is rebuilt only when its recipe or the agent changed.
    Build {
        languages: Vec<String>,
        #[arg(long, default_value_os_t = super::default_recipes_dir())]
        recipes: PathBuf,
        #[arg(long, default_value_os_t = super::default_agent_path())]
        agent: PathBuf,
        #[arg(
            long,
            env = "IGNIS_DEBIAN_MIRROR",
            default_value = "http://deb.debian.org/debian"
        )]
        mirror: String,
    },
    /// Make the snapshot of each language (all when none is named) that VMs
    /// are restored from: boot once, warm the runtime, save. Cached: a
    /// sound snapshot for the current kernel, image and VMM is kept.
    Snapshot { languages: Vec<String> },
    /// List the images and snapshots found, and what is wrong with those
    /// that are unusable.
    List {
        /// One JSON object: per language its bytes on disk, base, runtime
        /// version and recipe hash.
        #[arg(long)]
        json: bool,
    },
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    let paths = Paths::from_env();
    match cmd {
        Command::Build {
            languages,
            recipes,
            agent,
            mirror,
        } => build(&paths, &languages, &recipes, agent, mirror),
        Command::Snapshot { languages } => snapshot(paths, languages),
        Command::List { json } => {
            let c = Catalog::discover(&paths.images());
            let snapshots = SnapshotStore::new(paths.snapshots()).list();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list_json(&c, &snapshots))?
                );
            } else {
                print_list(&c, &snapshots);
            }
            Ok(if c.problems.is_empty() && c.kernel.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Builds the base, then every recipe asked for over it. A recipe that
/// cannot be read or built is reported by name and fails the command, but
/// the others are still built, and no image but its own is touched.
fn build(
    paths: &Paths,
    languages: &[String],
    recipes: &std::path::Path,
    agent: PathBuf,
    mirror: String,
) -> anyhow::Result<ExitCode> {
    let mut files = build::recipe_files(recipes)
        .with_context(|| format!("reading recipes in {}", recipes.display()))?;
    if !languages.is_empty() {
        for l in languages {
            if !files
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == l.as_str()))
            {
                bail!("no recipe for {l:?} in {}", recipes.display());
            }
        }
        files.retain(|f| {
            languages
                .iter()
                .any(|l| f.file_stem().is_some_and(|s| s == l.as_str()))
        });
    }
    let opts = BuildOptions {
        images_dir: paths.images(),
        cache_dir: paths.cache(),
        agent,
        mirror,
    };
    let mut failed = Vec::new();
    let mut recipes = Vec::new();
    for f in &files {
        match build::read_recipe(f) {
            Ok(r) => recipes.push(r),
            Err(e) => {
                let name = f
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                eprintln!("image {name}: FAILED: {e}");
                failed.push(name);
            }
        }
    }
    let started = std::time::Instant::now();
    let base = build::build_base(&build::RealHost, &opts).context("building the base image")?;
    eprintln!(
        "image base: {} ({:.1} MiB)",
        base.manifest.id,
        mib(base.manifest.bytes)
    );
    for recipe in &recipes {
        match build::build(recipe, &base, &opts) {
            Ok(Built::UpToDate(m)) => {
                eprintln!("image {}: up to date ({})", m.language, m.version)
            }
            Ok(Built::Fresh(m)) => eprintln!(
                "image {}: built {} ({:.1} MiB layer)",
                m.language,
                m.version,
                mib(m.layer_bytes)
            ),
            Err(e) => {
                eprintln!("image {}: FAILED: {e}", recipe.name);
                failed.push(recipe.name.clone());
            }
        }
    }
    match build::prune_bases(&opts.images_dir, &base.manifest.id) {
        Ok(gone) if !gone.is_empty() => eprintln!("image base: removed unused {}", gone.join(", ")),
        Ok(_) => {}
        Err(e) => eprintln!("image base: could not remove unused bases: {e}"),
    }
    eprintln!("images: {} s", started.elapsed().as_secs());
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("images: FAILED: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

type SnapshotList = Vec<(
    String,
    Result<ignis_vmm::snapshot::Snapshot, ignis_vmm::snapshot::Problem>,
)>;

fn print_list(c: &Catalog, snapshots: &SnapshotList) {
    match &c.kernel {
        Ok(k) => println!("kernel   {} ({})", k.path.display(), k.key),
        Err(p) => println!("kernel   UNUSABLE: {}", p.problem),
    }
    for (id, b) in &c.bases {
        println!(
            "base     {id} {:.1} MiB [{}]",
            mib(b.manifest.bytes),
            b.path.display()
        );
    }
    for (name, img) in &c.languages {
        println!(
            "{name:10} {:.1} MiB over {} ({:.1} MiB with it)  {}",
            mib(img.layer_bytes()),
            img.manifest.base,
            mib(img.total_bytes()),
            img.manifest.version.lines().next().unwrap_or_default(),
        );
    }
    for p in &c.problems {
        println!("{:10} UNUSABLE: {}", p.name, p.problem);
    }
    let total = c.bases.values().map(|b| b.manifest.bytes).sum::<u64>()
        + c.languages.values().map(|l| l.layer_bytes()).sum::<u64>();
    println!("total    {:.1} MiB on disk", mib(total));
    for (name, snap) in snapshots {
        match snap {
            Ok(s) => println!(
                "snapshot {name} ({} MiB guest, {}, source ready in {} ms)",
                s.meta.memory_mib, s.meta.runtime_version, s.meta.source_ready_ms
            ),
            Err(p) => println!("snapshot {name} UNUSABLE: {p}"),
        }
    }
}

fn list_json(c: &Catalog, snapshots: &SnapshotList) -> serde_json::Value {
    use serde_json::json;
    let languages: Vec<_> = c
        .languages
        .values()
        .map(|img| {
            let m = &img.manifest;
            json!({
                "language": m.language,
                "runtime_version": m.version,
                "base": m.base,
                "layer": img.layer,
                "layer_bytes": m.layer_bytes,
                "base_bytes": img.base.manifest.bytes,
                "total_bytes": img.total_bytes(),
                "recipe_sha256": m.recipe_sha256,
                "key": m.key,
                "compiled": m.compiled,
                "extensions": m.extensions,
                "vm_memory_mib": m.vm_memory_mib,
            })
        })
        .collect();
    let bases: Vec<_> = c
        .bases
        .values()
        .map(|b| json!({"id": b.manifest.id, "suite": b.manifest.suite, "path": b.path, "bytes": b.manifest.bytes}))
        .collect();
    let total = c.bases.values().map(|b| b.manifest.bytes).sum::<u64>()
        + c.languages.values().map(|l| l.layer_bytes()).sum::<u64>();
    json!({
        "kernel": match &c.kernel {
            Ok(k) => json!({"path": k.path, "key": k.key}),
            Err(p) => json!({"problem": p.problem}),
        },
        "bases": bases,
        "languages": languages,
        "problems": c.problems.iter().map(|p| json!({"name": p.name, "problem": p.problem})).collect::<Vec<_>>(),
        "total_bytes": total,
        "snapshots": snapshots.iter().map(|(name, s)| match s {
            Ok(s) => json!({"name": name, "language": s.meta.language, "memory_mib": s.meta.memory_mib}),
            Err(p) => json!({"name": name, "problem": p.to_string()}),
        }).collect::<Vec<_>>(),
    })
}

fn snapshot(paths: Paths, languages: Vec<String>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let launcher = Launcher::new(paths).await?;
        let languages = if languages.is_empty() {
            launcher.catalog.languages.keys().cloned().collect()
        } else {
            languages
        };
        let mut failed = false;
        for language in languages {
            let started = std::time::Instant::now();
            match launcher.snapshot(&language).await {
                Ok(s) => eprintln!(
                    "snapshot {language}: {} ({} s)",
                    s.dir.display(),
                    started.elapsed().as_secs()
                ),
                Err(e) => {
                    eprintln!("snapshot {language}: FAILED: {e}");
                    failed = true;
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
