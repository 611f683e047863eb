//! Every call the Firecracker driver makes, checked against Firecracker's
//! own API description (swagger): the path and method exist, the body is
//! the definition that operation takes, every required field is there, no
//! field is unknown, and every value has the documented type and enum.

use std::path::Path;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::*;
use crate::driver::{GuestParams, MachineSpec, SnapshotFiles};

/// The calls of a boot, a restore and a snapshot, as the driver makes them.
fn every_call() -> Vec<Call> {
    let guest = GuestParams {
        vm_id: "0123456789ab".into(),
        unix_time: 1_800_000_000,
        tsc_khz: None,
    };
    let drives = [
        std::path::PathBuf::from("/var/lib/ignis/images/base/bookworm-1.erofs"),
        std::path::PathBuf::from("/var/lib/ignis/images/python/layer.erofs"),
    ];
    let spec = MachineSpec {
        dir: Path::new("/run/ignis/vm-0123456789ab"),
        kernel: Path::new("/var/lib/ignis/images/kernel/vmlinux"),
        drives: &drives,
        memory_mib: 512,
        guest: &guest,
    };
    let vsock = spec.dir.join("v.sock");
    let snap = SnapshotFiles {
        dir: Path::new("/var/lib/ignis/snapshots/python-abc"),
    };
    let mut calls = boot_calls(&spec, &vsock);
    calls.push(restore_call(
        &snap.dir.join(STATE_FILE),
        &snap.memory(),
        &vsock,
    ));
    calls.extend(snapshot_calls(snap));
    calls
}

fn schema() -> Yaml {
    // Set by build.rs whenever the tests that read it are not ignored.
    let path =
        option_env!("IGNIS_FC_SCHEMA").unwrap_or_else(|| panic!("no schema path from build.rs"));
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).expect("firecracker.yaml parses")
}

/// The definition a `$ref` names.
fn resolve<'a>(doc: &'a Yaml, schema: &'a Yaml) -> &'a Yaml {
    match schema.get("$ref").and_then(Yaml::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/definitions/");
            &doc["definitions"][name]
        }
        None => schema,
    }
}

/// Checks `value` against `schema`; returns what is wrong, by path.
fn check(doc: &Yaml, schema: &Yaml, value: &Json, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(allowed) = schema.get("enum").and_then(Yaml::as_sequence) {
        let ok = allowed.iter().any(|a| a.as_str() == value.as_str());
        if !ok {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        return;
    }
    let ty = schema
        .get("type")
        .and_then(Yaml::as_str)
        .unwrap_or("object");
    match (ty, value) {
        ("object", Json::Object(fields)) => {
            let props = schema.get("properties").and_then(Yaml::as_mapping);
            for req in schema
                .get("required")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let name = req.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    errors.push(format!("{at}: required field {name} missing"));
                }
            }
            for (name, v) in fields {
                match props.and_then(|p| p.get(Yaml::from(name.as_str()))) {
                    Some(s) => check(doc, s, v, &format!("{at}.{name}"), errors),
                    None => errors.push(format!("{at}: field {name} is not in the API")),
                }
            }
        }
        ("string", Json::String(_)) | ("boolean", Json::Bool(_)) => {}
        ("integer", Json::Number(n)) if n.is_u64() || n.is_i64() => {
            if let (Some(min), Some(v)) = (schema.get("minimum").and_then(Yaml::as_i64), n.as_i64())
            {
                if v < min {
                    errors.push(format!("{at}: {v} is below the minimum {min}"));
                }
            }
        }
        (ty, v) => errors.push(format!("{at}: {v} is not a {ty}")),
    }
}

#[test]
#[cfg_attr(
    not(ignis_fc_schema),
    ignore = "Firecracker's API description is not on this machine (../shared/reference/firecracker/firecracker.yaml or IGNIS_FIRECRACKER_SCHEMA)"
)]
fn every_call_matches_firecrackers_api_description() {
    let doc = schema();
    let mut errors = Vec::new();
    let calls = every_call();
    assert_eq!(
        calls.len(),
        11,
        "boot (8: two drives), restore (1), snapshot (2)"
    );
    for c in &calls {
        // "/drives/root" is an instance of "/drives/{drive_id}".
        let template = if c.path.starts_with("/drives/") {
            "/drives/{drive_id}"
        } else {
            c.path.as_str()
        };
        let method = c.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][template][method.as_str()];
        if op.is_null() {
            errors.push(format!("{} {template}: no such operation", c.method));
            continue;
        }
        let body = op["parameters"]
            .as_sequence()
            .and_then(|ps| ps.iter().find(|p| p["in"].as_str() == Some("body")))
            .map(|p| &p["schema"]);
        match body {
            Some(schema) => check(
                &doc,
                schema,
                &c.body,
                &format!("{} {}", c.method, c.path),
                &mut errors,
            ),
            None => errors.push(format!("{} {template}: takes no body", c.method)),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
#[cfg_attr(
    not(ignis_fc_schema),
    ignore = "Firecracker's API description is not on this machine (../shared/reference/firecracker/firecracker.yaml or IGNIS_FIRECRACKER_SCHEMA)"
)]
fn the_checker_catches_what_firecracker_would_refuse() {
    let doc = schema();
    let drive = &doc["definitions"]["Drive"];
    let mut errors = Vec::new();
    let bad = serde_json::json!({"drive_id": "root", "is_root_device": "yes", "read_only": true});
    check(&doc, drive, &bad, "drive", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors
        .iter()
        .any(|e| e.contains("is_root_device") && e.contains("boolean")));
    assert!(errors
        .iter()
        .any(|e| e.contains("read_only") && e.contains("not in the API")));
}

#[test]
fn a_boot_configures_before_it_starts_and_a_guest_dials_vsock() {
    let calls = every_call();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths[..8],
        [
            "/machine-config",
            "/boot-source",
            "/drives/root",
            "/drives/layer1",
            "/vsock",
            "/balloon",
            "/entropy",
            "/actions"
        ]
    );
    assert_eq!(calls[7].body["action_type"], "InstanceStart");
    assert_eq!(calls[2].body["is_read_only"], true);
    assert_eq!(calls[2].body["is_root_device"], true);
    assert_eq!(calls[3].body["is_read_only"], true);
    assert_eq!(calls[3].body["is_root_device"], false);
    assert_eq!(
        calls[3].body["path_on_host"],
        "/var/lib/ignis/images/python/layer.erofs"
    );
    let args = calls[1].body["boot_args"].as_str().expect("boot args");
    assert!(
        args.contains("ignis.channel=vsock") && args.contains("ignis.vm=0123456789ab"),
        "{args}"
    );
    assert!(args.contains("ignis.layers=vdb"), "{args}");
    assert_eq!(calls[8].body["mem_backend"]["backend_type"], "File");
    assert_eq!(
        calls[8].body["vsock_override"]["uds_path"],
        "/run/ignis/vm-0123456789ab/v.sock"
    );
}
