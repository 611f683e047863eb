//! Flat images, as Ignis built them before the shared base and layers: one
//! uncompressed ext4 root per language, `<language>/rootfs.ext4` beside a
//! manifest. Only `ignis bench --baseline DIR` reads them, to measure the
//! current images and earlier ones side by side in one run; nothing serves
//! from them.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use super::{BaseImage, BaseManifest, LanguageImage};

/// The fields of an earlier manifest that a boot needs.
#[derive(Debug, Deserialize)]
struct FlatManifest {
    language: String,
    version: String,
    vm_memory_mib: u64,
    rootfs_bytes: u64,
    key: String,
}

/// The flat image of `like`'s language in `dir`, to boot in its place: the
/// same language and recipe, the flat root as its only drive.
pub fn load(dir: &Path, like: &LanguageImage) -> Result<LanguageImage, String> {
    let lang_dir = dir.join(like.name());
    let bytes = std::fs::read(lang_dir.join("manifest.json"))
        .map_err(|e| format!("{}: {e}", lang_dir.join("manifest.json").display()))?;
    let m: FlatManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a flat image manifest: {e}"))?;
    if m.language != like.name() {
        return Err(format!("manifest names language {:?}", m.language));
    }
    let rootfs = lang_dir.join("rootfs.ext4");
    let mut f = std::fs::File::open(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    // The ext4 superblock starts at 1024; its magic 0xEF53 sits at offset 56.
    let mut magic = [0u8; 2];
    f.seek(SeekFrom::Start(1024 + 56))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|e| format!("{}: {e}", rootfs.display()))?;
    if len != m.rootfs_bytes || magic != [0x53, 0xEF] {
        return Err(format!(
            "{} is not the ext4 root its manifest describes",
            rootfs.display()
        ));
    }
    let mut manifest = like.manifest.clone();
    manifest.version = m.version;
    manifest.vm_memory_mib = m.vm_memory_mib;
    manifest.layer_bytes = 0;
    manifest.base = format!("flat-{}", m.key);
    Ok(LanguageImage {
        base: BaseImage {
            path: rootfs,
            manifest: BaseManifest {
                id: manifest.base.clone(),
                suite: "bookworm".into(),
                tree_key: String::new(),
                bytes: len,
            },
        },
        layer: None,
        manifest,
    })
}
