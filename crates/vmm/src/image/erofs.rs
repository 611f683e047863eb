//! Just enough of the EROFS on-disk format (Linux's `fs/erofs/erofs_fs.h`)
//! to walk an image's directories and read every inode's mode, on the host
//! and without mounting it: which is how Ignis checks, before it boots a
//! VM from an image, that the image holds no set-user-id or set-group-id
//! file. Images are packed with none (`pack::strip_setid`); one that has
//! some was not built by this Ignis, and no VM starts from it.
//!
//! Only metadata is read (inodes and directory blocks, which EROFS never
//! compresses), so a walk of a whole language layer takes milliseconds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPER_OFFSET: u64 = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
/// Inode slots are 32 bytes; a nid counts slots from the metadata start.
const SLOT: u64 = 32;
const DIRENT: usize = 12;
const FT_DIR: u8 = 2;
/// Data layouts a directory can have (erofs_fs.h).
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;
/// More inodes than this is a corrupt image, not a real one.
const MAX_INODES: usize = 4_000_000;

struct Image {
    file: File,
    len: u64,
    blksz: u64,
    meta: u64,
    /// Blocks read so far: inodes sit side by side, so one read of a block
    /// serves many of them (a read per inode made a walk ten times slower).
    cache: std::cell::RefCell<std::collections::HashMap<u64, Vec<u8>>>,
}

struct Inode {
    mode: u16,
    layout: u16,
    size: u64,
    raw_blkaddr: u64,
    /// Where an inline tail would start: after the inode and its xattrs.
    tail: u64,
}

impl Image {
    fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        let end = off.checked_add(len as u64).ok_or("offset overflows")?;
        if end > self.len {
            return Err(format!("reads past its end ({end} > {} bytes)", self.len));
        }
        let mut buf = Vec::with_capacity(len);
        let mut cache = self.cache.borrow_mut();
        let mut at = off;
        while at < end {
            let block = at / self.blksz;
            let data = match cache.entry(block) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let start = block * self.blksz;
                    let mut data = vec![0u8; (self.len - start).min(self.blksz) as usize];
                    self.file
                        .read_exact_at(&mut data, start)
                        .map_err(|e| e.to_string())?;
                    v.insert(data)
                }
            };
            let from = (at - block * self.blksz) as usize;
            let to = ((end - block * self.blksz) as usize).min(data.len());
            buf.extend_from_slice(&data[from..to]);
            at = block * self.blksz + to as u64;
        }
        Ok(buf)
    }

    fn inode(&self, nid: u64) -> Result<Inode, String> {
        let off = nid
            .checked_mul(SLOT)
            .and_then(|o| o.checked_add(self.meta))
            .ok_or("inode number overflows")?;
        let head = self.read(off, 32)?;
        let u16_at = |i: usize| u16::from_le_bytes([head[i], head[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let format = u16_at(0);
        let extended = format & 1 == 1;
        let icount = u64::from(u16_at(2));
        let size = if extended {
            let b = self.read(off + 8, 8)?;
            u64::from_le_bytes(b.try_into().map_err(|_| "short read")?)
        } else {
            u64::from(u32_at(8))
        };
        let isize = if extended { 64 } else { 32 };
        let xattrs = if icount == 0 {
            0
        } else {
            12 + 4 * (icount - 1)
        };
        Ok(Inode {
            mode: u16_at(4),
            layout: (format >> 1) & 0x7,
            size,
            raw_blkaddr: u64::from(u32_at(16)),
            tail: off + isize + xattrs,
        })
    }

    /// The blocks of directory `dir`, each with how many bytes of it count.
    fn dir_blocks(&self, dir: &Inode) -> Result<Vec<Vec<u8>>, String> {
        let full = match dir.layout {
            FLAT_PLAIN => dir.size.div_ceil(self.blksz),
            FLAT_INLINE => dir.size / self.blksz,
            other => return Err(format!("a directory has data layout {other}")),
        };
        let mut blocks = Vec::new();
        for i in 0..full {
            let at = (dir.raw_blkaddr + i) * self.blksz;
            let n = (dir.size - i * self.blksz).min(self.blksz);
            blocks.push(self.read(at, n as usize)?);
        }
        let rest = dir.size % self.blksz;
        if dir.layout == FLAT_INLINE && rest > 0 {
            blocks.push(self.read(dir.tail, rest as usize)?);
        }
        Ok(blocks)
    }
}

/// The entries of one directory block: (name, nid, file type).
fn dirents(block: &[u8]) -> Result<Vec<(String, u64, u8)>, String> {
    if block.len() < DIRENT {
        return Err("a directory block is too short".into());
    }
    let nameoff = |i: usize| {
        usize::from(u16::from_le_bytes([
            block[i * DIRENT + 8],
            block[i * DIRENT + 9],
        ]))
    };
    let count = nameoff(0) / DIRENT;
    if count == 0 || count * DIRENT > block.len() {
        return Err("a directory block is malformed".into());
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = i * DIRENT;
        let nid = u64::from_le_bytes(block[at..at + 8].try_into().map_err(|_| "short dirent")?);
        let start = nameoff(i);
        let end = if i + 1 < count {
            nameoff(i + 1)
        } else {
            block.len()
        };
        if start > end || end > block.len() {
            return Err("a directory entry's name is out of its block".into());
        }
        let raw = &block[start..end];
        // The last name of a block is padded with NULs.
        let raw = raw.split(|b| *b == 0).next().unwrap_or(raw);
        out.push((
            String::from_utf8_lossy(raw).into_owned(),
            nid,
            block[at + 10],
        ));
    }
    Ok(out)
}

/// Every regular file and directory in the EROFS image at `path` with a
/// set-user-id or set-group-id bit, as absolute paths inside the image,
/// sorted. An image that cannot be walked is an error saying why.
pub fn setid_paths(path: &Path) -> Result<Vec<String>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let probe = Image {
        file,
        len,
        blksz: 4096,
        meta: 0,
        cache: Default::default(),
    };
    let sb = probe.read(SUPER_OFFSET, 128)?;
    let u32_at = |i: usize| u32::from_le_bytes([sb[i], sb[i + 1], sb[i + 2], sb[i + 3]]);
    if u32_at(0) != MAGIC {
        return Err("no EROFS superblock".into());
    }
    let blkszbits = sb[12];
    if !(9..=16).contains(&blkszbits) {
        return Err(format!("block size 2^{blkszbits}"));
    }
    let blksz = 1u64 << blkszbits;
    let root = u64::from(u16::from_le_bytes([sb[14], sb[15]]));
    let img = Image {
        meta: u64::from(u32_at(40)) * blksz,
        blksz,
        file: probe.file,
        len,
        cache: Default::default(),
    };

    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(String::new(), root)];
    while let Some((dir_path, nid)) = todo.pop() {
        if !seen.insert(nid) || seen.len() > MAX_INODES {
            return Err("a directory appears twice (corrupt)".into());
        }
        let dir = img.inode(nid)?;
        if dir.mode & S_IFMT != S_IFDIR {
            return Err(format!("{dir_path}/ is not a directory"));
        }
        for block in img.dir_blocks(&dir)? {
            for (name, child, ftype) in dirents(&block)? {
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{dir_path}/{name}");
                let inode = img.inode(child)?;
                let kind = inode.mode & S_IFMT;
                if inode.mode & 0o6000 != 0 && (kind == S_IFREG || kind == S_IFDIR) {
                    found.push(path.clone());
                }
                if ftype == FT_DIR {
                    todo.push((path, child));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Images already walked by this process, as (path, length, modification
/// time): an image file is never changed in place (a rebuild writes a new
/// file and renames it over), so one walk per file is enough.
static CHECKED: std::sync::Mutex<Vec<(std::path::PathBuf, u64, std::time::SystemTime)>> =
    std::sync::Mutex::new(Vec::new());

/// Refuses drives holding a set-id file: called by the drivers before a
/// VMM is started, so no VM ever boots from such an image. Drives that are
/// not EROFS (the flat ext4 images `ignis bench --baseline` boots) are not
/// walked. Each image is walked once per process (a few milliseconds).
pub fn check_drives(drives: &[std::path::PathBuf]) -> Result<(), String> {
    for drive in drives {
        let meta = std::fs::metadata(drive).map_err(|e| format!("{}: {e}", drive.display()))?;
        let id = (
            drive.clone(),
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        );
        // A poisoned lock only means another check panicked; the list
        // itself is still valid.
        if CHECKED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            continue;
        }
        let mut magic = [0u8; 4];
        let file = File::open(drive).map_err(|e| format!("{}: {e}", drive.display()))?;
        if file.read_exact_at(&mut magic, SUPER_OFFSET).is_err()
            || u32::from_le_bytes(magic) != MAGIC
        {
            continue;
        }
        let found =
            setid_paths(drive).map_err(|e| format!("{} cannot be read: {e}", drive.display()))?;
        if !found.is_empty() {
            return Err(format!(
                "{} holds set-id files ({}): it was not built by this Ignis; rebuild the images",
                drive.display(),
                found.join(", ")
            ));
        }
        CHECKED.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mkfs(tree: &Path, out: &Path, extra: &[&str]) {
        let st = std::process::Command::new("mkfs.erofs")
            .arg("--quiet")
            .args(extra)
            .arg(out)
            .arg(tree)
            .output()
            .expect("mkfs.erofs (erofs-utils; scripts/setup installs it)");
        assert!(st.status.success(), "{st:?}");
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A tree like an image's: a crowded /usr/bin (directories spanning
    /// several blocks), links, a set-uid and a set-gid program, a set-gid
    /// directory and one deep down.
    fn tree(root: &Path) {
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for i in 0..400 {
            std::fs::write(bin.join(format!("program-with-a-long-name-{i:04}")), b"x")
                .expect("write");
        }
        std::fs::write(bin.join("su"), b"su").expect("write");
        chmod(&bin.join("su"), 0o4755);
        std::fs::write(bin.join("wall"), b"wall").expect("write");
        chmod(&bin.join("wall"), 0o2755);
        std::os::unix::fs::symlink("su", bin.join("link-to-su")).expect("symlink");
        std::fs::create_dir_all(root.join("var/mail")).expect("mkdir");
        chmod(&root.join("var/mail"), 0o2775);
        std::fs::create_dir_all(root.join("tmp")).expect("mkdir");
        chmod(&root.join("tmp"), 0o1777);
        let deep = root.join("a/b/c/d");
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::write(deep.join("helper"), b"h").expect("write");
        chmod(&deep.join("helper"), 0o4711);
    }

    #[test]
    fn every_setid_file_and_directory_is_found_in_both_image_formats() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("tree");
        tree(&root);
        let want = [
            "/a/b/c/d/helper",
            "/usr/bin/su",
            "/usr/bin/wall",
            "/var/mail",
        ];
        for (name, extra) in [
            ("plain.erofs", &[][..]),
            (
                "packed.erofs",
                &["-zlz4hc,12", "-C4096", "-Eztailpacking"][..],
            ),
        ] {
            let img = tmp.path().join(name);
            mkfs(&root, &img, extra);
            assert_eq!(setid_paths(&img).expect(name), want, "{name}");
        }
    }

    #[test]
    fn a_clean_image_has_none_and_a_damaged_one_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("tree");
        tree(&root);
        crate::image::pack::strip_setid(&root).expect("strip");
        let img = tmp.path().join("clean.erofs");
        mkfs(&root, &img, &["-zlz4hc,12", "-C4096", "-Eztailpacking"]);
        assert_eq!(setid_paths(&img).expect("clean"), Vec::<String>::new());

        // Cut off after the superblock: the walk cannot finish.
        let bytes = std::fs::read(&img).expect("read");
        let cut = tmp.path().join("cut.erofs");
        std::fs::write(&cut, &bytes[..2048]).expect("write");
        assert!(setid_paths(&cut).is_err(), "a truncated image walked");
        let none = tmp.path().join("none.erofs");
        std::fs::write(&none, vec![0u8; 4096]).expect("write");
        let e = setid_paths(&none).expect_err("no superblock");
        assert!(e.contains("superblock"), "{e}");
    }

    #[test]
    fn drives_with_setid_files_are_refused_by_name_and_others_pass() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("tree");
        tree(&root);
        let bad = tmp.path().join("bad.erofs");
        mkfs(&root, &bad, &[]);
        crate::image::pack::strip_setid(&root).expect("strip");
        let good = tmp.path().join("good.erofs");
        mkfs(&root, &good, &[]);
        let flat = tmp.path().join("flat.ext4");
        std::fs::write(&flat, vec![0u8; 8192]).expect("write");

        check_drives(&[good.clone(), flat.clone()]).expect("a clean image and a flat one");
        check_drives(std::slice::from_ref(&good)).expect("again, from the cache");
        let e = check_drives(&[good, bad]).expect_err("set-id files");
        assert!(e.contains("bad.erofs") && e.contains("/usr/bin/su"), "{e}");
        let e = check_drives(&[tmp.path().join("missing.erofs")]).expect_err("missing");
        assert!(e.contains("missing.erofs"), "{e}");
    }
}
