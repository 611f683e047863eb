//! Finds Firecracker's API description for the schema tests: on the
//! development machines it sits beside the repository
//! (`../shared/reference/firecracker/firecracker.yaml`), or where
//! `IGNIS_FIRECRACKER_SCHEMA` says. Without it those tests are ignored,
//! and say why.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ignis_fc_schema)");
    println!("cargo::rerun-if-env-changed=IGNIS_FIRECRACKER_SCHEMA");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let schema = std::env::var_os("IGNIS_FIRECRACKER_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../../shared/reference/firecracker/firecracker.yaml"));
    println!("cargo::rerun-if-changed={}", schema.display());
    if schema.is_file() {
        println!("cargo::rustc-cfg=ignis_fc_schema");
        println!("cargo::rustc-env=IGNIS_FC_SCHEMA={}", schema.display());
    }
}
