//! A cgroup per VMM process, bounding its memory, CPU and processes, on
//! cgroup v2 where the host's unified hierarchy carries those controllers
//! and on the v1 hierarchies otherwise (as Firecracker's jailer supports
//! both; the development machines mount v1 for memory, cpu and pids with
//! an empty v2 hierarchy beside them).
//!
//! Layout, in every hierarchy used:
//! `<mount>/ignis/<instance>/<owner>/vm-<id>` — `instance` names the
//! IGNIS_HOME, `owner` the process that started the VMM (pid and start
//! time), so a later process finds what a dead one left and kills it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The controllers a VMM cgroup needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy at this mount point.
    V2(PathBuf),
    /// One hierarchy per controller: memory, cpu, pids (in that order).
    V1([PathBuf; 3]),
}

impl Layout {
    /// What the host offers, from /proc/self/mountinfo: v2 when its root
    /// has memory, cpu and pids, else the three v1 hierarchies.
    pub fn detect() -> Result<Layout, String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        Layout::from_mountinfo(&info, |p| std::fs::read_to_string(p).ok())
    }

    fn from_mountinfo(
        info: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Layout, String> {
        let mut v1: [Option<PathBuf>; 3] = Default::default();
        let mut v2_seen = None;
        for line in info.lines() {
            // "id parent major:minor root mount-point opts... - fstype source super-opts"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = left.split_whitespace().nth(4);
            let mut right = right.split_whitespace();
            let (fstype, super_opts) = (right.next(), right.nth(1).unwrap_or(""));
            let Some(mount) = mount.map(PathBuf::from) else {
                continue;
            };
            match fstype {
                Some("cgroup2") => {
                    let have = read(&mount.join("cgroup.controllers")).unwrap_or_default();
                    let words: Vec<&str> = have.split_whitespace().collect();
                    if CONTROLLERS.iter().all(|c| words.contains(c)) {
                        return Ok(Layout::V2(mount));
                    }
                    v2_seen = Some(mount);
                }
                Some("cgroup") => {
                    let opts: Vec<&str> = super_opts.split(',').collect();
                    for (i, c) in CONTROLLERS.iter().enumerate() {
                        if opts.contains(c) && v1[i].is_none() {
                            v1[i] = Some(mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        match v1 {
            [Some(m), Some(c), Some(p)] => Ok(Layout::V1([m, c, p])),
            _ => Err(match v2_seen {
                Some(m) => format!(
                    "the cgroup v2 hierarchy at {} lacks memory, cpu or pids, and no v1 \
                     hierarchies carry them",
                    m.display()
                ),
                None => "no cgroup hierarchy with memory, cpu and pids".into(),
            }),
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            Layout::V2(_) => 2,
            Layout::V1(_) => 1,
        }
    }

    /// The directories of a cgroup at `rel` (relative to each hierarchy).
    fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match self {
            Layout::V2(root) => vec![root.join(rel)],
            Layout::V1(roots) => roots.iter().map(|r| r.join(rel)).collect(),
        }
    }
}

/// What one VMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU time per 100 ms period, in microseconds (100_000: one CPU).
    pub cpu_quota_us: u64,
    pub pids: u32,
}

const CPU_PERIOD_US: u64 = 100_000;

/// One VMM's cgroup, removed by [`VmCgroup::remove`] once its processes
/// are gone.
#[derive(Debug)]
pub struct VmCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of every hierarchy, for the child to join before exec.
    pub procs: Vec<CString>,
}

impl VmCgroup {
    /// Creates `<base>/vm-<id>` with `limits` in every hierarchy.
    pub fn create(
        layout: &Layout,
        base: &Path,
        id: &str,
        limits: Limits,
    ) -> std::io::Result<VmCgroup> {
        let rel = base.join(format!("vm-{id}"));
        if let Layout::V2(root) = layout {
            enable_v2_controllers(root, &rel)?;
        }
        let dirs = layout.dirs(&rel);
        for d in &dirs {
            std::fs::create_dir_all(d)?;
        }
        let cg = VmCgroup {
            procs: dirs
                .iter()
                .map(|d| cstring(&d.join("cgroup.procs")))
                .collect::<std::io::Result<_>>()?,
            dirs,
        };
        if let Err(e) = cg.limit(layout, limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn limit(&self, layout: &Layout, l: Limits) -> std::io::Result<()> {
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), &value).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}/{file} = {value}: {e}", dir.display()))
            })
        };
        match (layout, self.dirs.as_slice()) {
            (Layout::V2(_), [d]) => {
                write(d, "memory.max", l.memory_bytes.to_string())?;
                let _ = write(d, "memory.swap.max", "0".into());
                write(d, "cpu.max", format!("{} {CPU_PERIOD_US}", l.cpu_quota_us))?;
                write(d, "pids.max", l.pids.to_string())
            }
            (Layout::V1(_), [mem, cpu, pids]) => {
                write(mem, "memory.limit_in_bytes", l.memory_bytes.to_string())?;
                write(cpu, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                write(cpu, "cpu.cfs_quota_us", l.cpu_quota_us.to_string())?;
                write(pids, "pids.max", l.pids.to_string())
            }
            _ => Err(std::io::Error::other(
                "cgroup directories do not match the layout",
            )),
        }
    }

    /// Kills every process left in the cgroup and removes it.
    pub fn remove(&self) {
        for d in &self.dirs {
            kill_all(d);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

/// In v2 a controller must be enabled in every ancestor's subtree_control
/// for a descendant to use it.
fn enable_v2_controllers(root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in rel.iter() {
        let control: String = CONTROLLERS.iter().map(|c| format!("+{c} ")).collect();
        std::fs::write(dir.join("cgroup.subtree_control"), control.trim_end())?;
        dir.push(part);
        std::fs::create_dir_all(&dir)?;
    }
    Ok(())
}

/// SIGKILLs every process in the cgroup directory `dir` (v2 has
/// `cgroup.kill`; v1 lists them).
fn kill_all(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill with a pid read from the cgroup; no memory involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills and removes what dead owners left under `<hierarchy>/<instance_rel>`:
/// every `<owner>/vm-*` whose owner is not `alive`. Returns how many VMs'
/// cgroups were cleaned (a VM counts once, whatever the hierarchies).
pub fn reap_dead_owners(
    layout: &Layout,
    instance_rel: &Path,
    alive: impl Fn(&str) -> bool,
) -> usize {
    let mut cleaned = std::collections::BTreeSet::new();
    for base in layout.dirs(instance_rel) {
        for owner in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = owner.file_name().to_string_lossy().into_owned();
            if !owner.path().is_dir() || alive(&name) {
                continue;
            }
            for vm in std::fs::read_dir(owner.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if vm.path().is_dir() {
                    kill_all(&vm.path());
                    if std::fs::remove_dir(vm.path()).is_ok() {
                        cleaned.insert((name.clone(), vm.file_name()));
                    }
                }
            }
            let _ = std::fs::remove_dir(owner.path());
        }
    }
    cleaned.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
30 29 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_are_used_beside_an_empty_v2_one() {
        let l = Layout::from_mountinfo(V1_HOST, |_| Some(String::new())).expect("layout");
        assert_eq!(
            l,
            Layout::V1([
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/cpu".into(),
                "/sys/fs/cgroup/pids".into()
            ])
        );
        assert_eq!(l.dirs(Path::new("ignis/x")).len(), 3);
    }

    #[test]
    fn a_v2_hierarchy_with_the_controllers_wins() {
        let info = "40 1 0:33 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_mountinfo(info, |_| Some("cpuset cpu io memory pids".into()))
            .expect("layout");
        assert_eq!(l, Layout::V2("/sys/fs/cgroup".into()));
    }

    #[test]
    fn missing_controllers_are_named() {
        let info = "40 1 0:33 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = Layout::from_mountinfo(info, |_| Some("cpu".into())).expect_err("no memory");
        assert!(err.contains("lacks memory"), "{err}");
    }
}
