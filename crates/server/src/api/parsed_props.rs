//! Generated tests of limit validation: whatever limits a request asks for,
//! on whatever VM size, the job either gets exactly those limits (or the
//! defaults where it asked for none), each within what the server allows,
//! or is refused with a 422 naming the limit; never clamped, never a panic.

use proptest::option;
use proptest::prelude::*;

use super::*;

/// Values near the edges, where off-by-ones live, and anything at all.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=2,
        14u64..=18,
        prop_oneof![Just(448u64), Just(449), Just(1024), Just(1025)],
        Just(u64::MAX),
        any::<u64>(),
        0u64..200_000,
    ]
}

fn limits_body() -> impl Strategy<Value = LimitsBody> {
    (
        option::of(edgy_u64()),
        option::of(edgy_u64()),
        option::of(edgy_u64()),
        option::of(prop_oneof![0u32..=2, 63u32..=65, any::<u32>()]),
    )
        .prop_map(
            |(timeout_ms, memory_mib, max_output_kib, max_processes)| LimitsBody {
                timeout_ms,
                memory_mib,
                max_output_kib,
                max_processes,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn limits_are_taken_exactly_or_refused(
        asked in option::of(limits_body()),
        vm_memory_mib in prop_oneof![0u64..=100, Just(512u64), any::<u64>()],
    ) {
        let cfg = ServerConfig::new("/nonexistent".into());
        let (d, m) = (cfg.defaults, cfg.maxima);
        let given = asked.as_ref().map(|l| (l.timeout_ms, l.memory_mib, l.max_output_kib, l.max_processes));
        let body = CreateJob {
            language: "python".into(),
            files: None,
            code: Some("print(1)".into()),
            stdin: None,
            stdin_encoding: Encoding::Utf8,
            args: vec![],
            env: Default::default(),
            limits: asked,
            webhook_url: None,
        };
        let (t, mem, out, procs) = given.unwrap_or_default();
        let memory_max = m.memory_mib.min(vm_memory_mib.saturating_sub(64));
        let want = (
            t.unwrap_or(d.timeout_ms),
            mem.unwrap_or(d.memory_mib.min(memory_max)),
            out.unwrap_or(d.max_output_kib),
            procs.unwrap_or(d.max_processes),
        );
        let fits = (1..=m.timeout_ms).contains(&want.0)
            && (16..=memory_max).contains(&want.1)
            && (1..=m.max_output_kib).contains(&want.2)
            && (1..=m.max_processes).contains(&want.3);
        match body.validate(&cfg, "main.py", vm_memory_mib) {
            Ok(job) => {
                let l = job.request.limits;
                prop_assert!(fits, "accepted {l:?} outside the bounds");
                prop_assert_eq!((l.timeout_ms, l.memory_mib, l.max_output_kib, l.max_processes), want);
                prop_assert_eq!(l.compile_timeout_ms, d.compile_timeout_ms);
                prop_assert!(l.memory_mib + 64 <= vm_memory_mib, "no room left for the guest");
            }
            Err(p) => {
                prop_assert!(!fits, "refused {want:?}: {}", p.detail);
                prop_assert_eq!(p.status, 422);
                prop_assert!(
                    p.kind.ends_with("limit-too-low") || p.kind.ends_with("limit-exceeded"),
                    "{}", p.kind
                );
                prop_assert!(p.detail.starts_with("limits."), "{}", p.detail);
            }
        }
    }
}
