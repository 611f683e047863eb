//! What a VMM process costs the host, from `/proc/<pid>/smaps_rollup`.
//!
//! Proportional set size (PSS) is the honest figure for VMs restored from
//! one snapshot: a page shared by N of them counts 1/N in each, so the PSS
//! of all VMs adds up to what they really take together.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    /// Resident set size: every page mapped in, shared or not.
    pub rss_kib: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss_kib: u64,
    /// Of the PSS, anonymous memory (pages the guest wrote, QEMU's heap).
    pub pss_anon_kib: u64,
    /// Of the PSS, file-backed pages (shared snapshot RAM, binaries).
    pub pss_file_kib: u64,
}

impl HostMemory {
    /// PSS in MiB, rounded up.
    pub fn pss_mib(&self) -> u64 {
        self.pss_kib.div_ceil(1024)
    }
}

pub fn of_process(pid: u32) -> std::io::Result<HostMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(parse_rollup(&text))
}

fn parse_rollup(text: &str) -> HostMemory {
    let mut m = HostMemory::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "Rss:" => m.rss_kib = kib,
            "Pss:" => m.pss_kib = kib,
            "Pss_Anon:" => m.pss_anon_kib = kib,
            "Pss_File:" => m.pss_file_kib = kib,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rollup() {
        let text = "55d0c0a4e000-7ffd3a9f1000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:              151236 kB\nPss:              129001 kB\n\
                    Pss_Dirty:        118000 kB\nPss_Anon:         118204 kB\n\
                    Pss_File:          10797 kB\nPss_Shmem:             0 kB\n";
        let m = parse_rollup(text);
        assert_eq!(
            m,
            HostMemory {
                rss_kib: 151_236,
                pss_kib: 129_001,
                pss_anon_kib: 118_204,
                pss_file_kib: 10_797
            }
        );
        assert_eq!(m.pss_mib(), 126);
    }

    #[test]
    fn this_process_has_a_pss() {
        let m = of_process(std::process::id()).expect("own smaps_rollup");
        assert!(m.pss_kib > 0 && m.rss_kib >= m.pss_kib);
    }
}
