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
    List,
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    let paths = Paths::from_env();
    match cmd {
        Command::Build {
            languages,
            recipes,
            agent,
            mirror,
        } => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&recipes)
                .with_context(|| format!("reading recipes in {}", recipes.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            if !languages.is_empty() {
                for l in &languages {
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
            for f in files {
                let recipe = build::read_recipe(&f)?;
                match build::build(&recipe, &opts)
                    .with_context(|| format!("building image {}", recipe.name))?
                {
                    Built::UpToDate(m) => {
                        eprintln!("image {}: up to date ({})", m.language, m.version)
                    }
                    Built::Fresh(m) => eprintln!(
                        "image {}: built {} ({} MiB)",
                        m.language,
                        m.version,
                        m.rootfs_bytes / (1024 * 1024)
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot { languages } => snapshot(paths, languages),
        Command::List => {
            let c = Catalog::discover(&paths.images());
            match &c.kernel {
                Ok(k) => println!("kernel   {} ({})", k.path.display(), k.key),
                Err(p) => println!("kernel   UNUSABLE: {}", p.problem),
            }
            for (name, img) in &c.languages {
                println!(
                    "{name:8} {} [{}]",
                    img.manifest.version,
                    img.rootfs.display()
                );
            }
            for p in &c.problems {
                println!("{:8} UNUSABLE: {}", p.name, p.problem);
            }
            for (name, snap) in SnapshotStore::new(paths.snapshots()).list() {
                match snap {
                    Ok(s) => println!(
                        "snapshot {name} ({} MiB guest, {}, source ready in {} ms)",
                        s.meta.memory_mib, s.meta.runtime_version, s.meta.source_ready_ms
                    ),
                    Err(p) => println!("snapshot {name} UNUSABLE: {p}"),
                }
            }
            Ok(if c.problems.is_empty() && c.kernel.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
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
