//! Generated tests of the frame codec and every message: whatever a hostile
//! guest (or a buggy host) puts on the channel, decoding ends in a value or
//! an error, never a panic, and never allocates past the frame cap the
//! reader was given. Messages survive a round trip unchanged, so nothing a
//! program prints or is given is lost or altered in transit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use ignis_protocol::{
    decode, encode, read_frame, File, FrameError, GuestMessage, HostMessage, Limits, Phase, Ready,
    Resume, Resumed, RunOutcome, RunRequest, Stream, Verdict, GUEST_FRAME_MAX, HOST_FRAME_MAX,
    LEN_PREFIX, PROTOCOL_VERSION,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

/// Counts this thread's live heap bytes and their peak, so that a test can
/// tell what one call allocated while other tests run on other threads.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + size;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals, which do not
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the most heap it held at once
/// beyond what this thread held before.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(t, m, o, p, c)| Limits {
            timeout_ms: t,
            memory_mib: m,
            max_output_kib: o,
            max_processes: p,
            compile_timeout_ms: c,
        })
}

fn run_request() -> impl Strategy<Value = RunRequest> {
    (
        vec((any::<String>(), bytes(64)), 0..4),
        bytes(256),
        vec(any::<String>(), 0..4),
        btree_map(any::<String>(), any::<String>(), 0..4),
        limits(),
    )
        .prop_map(|(files, stdin, args, env, limits)| RunRequest {
            files: files
                .into_iter()
                .map(|(name, content)| File { name, content })
                .collect(),
            stdin,
            args,
            env,
            limits,
        })
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        run_request().prop_map(HostMessage::Run),
        Just(HostMessage::Ping),
        Just(HostMessage::Warm),
        (bytes(128), any::<u64>(), any::<String>()).prop_map(|(entropy, unix_time_ms, vm_id)| {
            HostMessage::Resume(Resume {
                entropy,
                unix_time_ms,
                vm_id,
            })
        }),
    ]
}

fn run_outcome() -> impl Strategy<Value = RunOutcome> {
    (
        (
            proptest::sample::select(Verdict::ALL.to_vec()),
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            option::of(any::<String>()),
            option::of(any::<u64>()),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            option::of(any::<String>()),
        ),
    )
        .prop_map(
            |(
                (status, exit_code, signal, compile_output, compile_ms),
                (duration_ms, cpu_ms, memory_kib, stdout_truncated, stderr_truncated, message),
            )| RunOutcome {
                status,
                exit_code,
                signal,
                compile_output,
                compile_ms,
                duration_ms,
                cpu_ms,
                memory_kib,
                stdout_truncated,
                stderr_truncated,
                message,
            },
        )
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    prop_oneof![
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<u64>()
        )
            .prop_map(|(agent_version, language, runtime_version, uptime_ms)| {
                GuestMessage::Ready(Ready {
                    agent_version,
                    language,
                    runtime_version,
                    uptime_ms,
                })
            }),
        prop_oneof![Just(Phase::Compiling), Just(Phase::Running)]
            .prop_map(|phase| GuestMessage::Phase { phase }),
        (
            prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)],
            bytes(512)
        )
            .prop_map(|(stream, data)| GuestMessage::Output { stream, data }),
        run_outcome().prop_map(GuestMessage::Result),
        Just(GuestMessage::Pong),
        (any::<String>(), any::<bool>())
            .prop_map(|(vm_id, reseeded)| GuestMessage::Resumed(Resumed { vm_id, reseeded })),
        any::<u64>().prop_map(|duration_ms| GuestMessage::Warmed { duration_ms }),
    ]
}

/// A frame whose prefix says `claimed` bytes, followed by `body`.
fn frame(claimed: u32, body: &[u8]) -> Vec<u8> {
    let mut out = claimed.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// What reading `input` as one frame under `max` does, checked for the
/// promises every reader makes whatever the input: no panic (proptest
/// reports one), no more heap than the cap (plus what a parse of a body that
/// small can take), and a prefix over the cap refused as `TooLarge`.
fn read_hostile<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    input: &[u8],
    max: usize,
) -> Result<(), String> {
    let (res, peak) = peak_heap(|| read_frame::<T>(&mut &input[..], max));
    let claimed = input
        .get(..LEN_PREFIX)
        .map(|p| u32::from_be_bytes(p.try_into().expect("4 bytes")) as usize);
    // A body within the cap is read into one buffer of the claimed size, and
    // parsing it builds values no bigger than a few times what arrived.
    let arrived = input.len().saturating_sub(LEN_PREFIX);
    let bound = claimed.unwrap_or(0).min(max) + 16 * arrived + 4096;
    if peak > bound {
        return Err(format!(
            "reading {} bytes (prefix {claimed:?}) held {peak} bytes of heap, over {bound}",
            input.len()
        ));
    }
    if let Some(len) = claimed.filter(|&len| len > max) {
        match res {
            Err(FrameError::TooLarge { len: l, max: m }) if (l, m) == (len, max) => {}
            other => return Err(format!("a prefix of {len} over {max} gave {other:?}")),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn host_messages_round_trip(msg in host_message()) {
        let frame = encode(&msg, HOST_FRAME_MAX).expect("encode");
        let len = u32::from_be_bytes(frame[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        prop_assert_eq!(len, frame.len() - LEN_PREFIX);
        let back: HostMessage = read_frame(&mut frame.as_slice(), HOST_FRAME_MAX).expect("read");
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn guest_messages_round_trip(msg in guest_message()) {
        let frame = encode(&msg, GUEST_FRAME_MAX).expect("encode");
        let back: GuestMessage = decode(&frame[LEN_PREFIX..]).expect("decode");
        prop_assert_eq!(back, msg);
    }

    /// The cap holds for the writer too: a message is encoded exactly when
    /// its frame body fits, so no side sends what the other must refuse.
    #[test]
    fn encode_refuses_exactly_what_exceeds_the_cap(msg in guest_message(), max in 0usize..1024) {
        let whole = encode(&msg, usize::MAX).expect("encode uncapped");
        let body = whole.len() - LEN_PREFIX;
        match encode(&msg, max) {
            Ok(frame) => { prop_assert!(body <= max); prop_assert_eq!(frame, whole); }
            Err(FrameError::TooLarge { len, max: m }) => {
                prop_assert!(body > max);
                prop_assert_eq!((len, m), (body, max));
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(input in bytes(2048)) {
        read_hostile::<GuestMessage>(&input, GUEST_FRAME_MAX).map_err(TestCaseError::fail)?;
        read_hostile::<HostMessage>(&input, HOST_FRAME_MAX).map_err(TestCaseError::fail)?;
        let _ = decode::<GuestMessage>(&input);
        let _ = decode::<HostMessage>(&input);
    }

    /// Whatever the prefix claims, up to 4 GiB, the reader allocates at
    /// most the cap; over it, nothing is read at all.
    #[test]
    fn any_length_prefix_is_checked_before_allocating(
        claimed in prop_oneof![any::<u32>(), Just(u32::MAX), (GUEST_FRAME_MAX as u32 - 2)..(GUEST_FRAME_MAX as u32 + 2)],
        body in bytes(64),
    ) {
        let input = frame(claimed, &body);
        read_hostile::<GuestMessage>(&input, GUEST_FRAME_MAX).map_err(TestCaseError::fail)?;
        read_hostile::<HostMessage>(&input, HOST_FRAME_MAX).map_err(TestCaseError::fail)?;
    }

    /// Mutated valid frames: the shape is right, a byte is wrong. Decoding
    /// gives the message, another message, or an error; never a panic.
    #[test]
    fn mutated_frames_decode_or_fail_cleanly(
        msg in guest_message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = encode(&msg, GUEST_FRAME_MAX).expect("encode");
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        read_hostile::<GuestMessage>(&frame, GUEST_FRAME_MAX).map_err(TestCaseError::fail)?;
    }

    /// JSON of any shape in a correct envelope: refused or understood, and
    /// what is understood encodes back to an equal message.
    #[test]
    fn any_json_in_an_envelope_decodes_or_fails_cleanly(msg in json(), v in prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()]) {
        let body = serde_json::to_vec(&serde_json::json!({"v": v, "msg": msg})).expect("json");
        match decode::<GuestMessage>(&body) {
            Ok(m) => {
                let again = encode(&m, GUEST_FRAME_MAX).expect("encode");
                prop_assert_eq!(decode::<GuestMessage>(&again[LEN_PREFIX..]).expect("decode"), m);
            }
            Err(FrameError::Version { got }) => prop_assert_eq!(got, v),
            Err(_) => {}
        }
        let _ = decode::<HostMessage>(&body);
    }
}

/// JSON values that look like messages: objects with a `type` among the
/// real ones and fields with the real names, holding anything.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("AAEC"),
            Just("=="),
            Just("running"),
            Just("ok"),
            Just("stdout")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    let value = leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(field(), inner, 0..6)
                .prop_map(|m: BTreeMap<String, Value>| Value::Object(m.into_iter().collect())),
        ]
    });
    (
        proptest::sample::select(vec![
            "ready", "phase", "output", "result", "pong", "resumed", "warmed", "run", "ping",
            "resume", "warm", "other",
        ]),
        btree_map(field(), value, 0..8),
    )
        .prop_map(|(kind, fields)| {
            let mut obj: serde_json::Map<String, Value> = fields.into_iter().collect();
            obj.insert("type".into(), Value::String(kind.into()));
            Value::Object(obj)
        })
}

fn field() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "phase",
        "stream",
        "data",
        "status",
        "exit_code",
        "signal",
        "vm_id",
        "reseeded",
        "duration_ms",
        "files",
        "name",
        "content",
        "stdin",
        "args",
        "env",
        "limits",
        "timeout_ms",
        "entropy",
        "agent_version",
        "x",
    ])
    .prop_map(str::to_owned)
}

/// The counter itself: without it the bounds above would hold vacuously.
#[test]
fn the_heap_counter_sees_a_large_buffer_and_a_capped_read() {
    let ((), peak) = peak_heap(|| drop(std::hint::black_box(vec![1u8; 1 << 20])));
    assert!(peak >= 1 << 20, "{peak}");
    // A prefix at the cap with no body: the reader allocates the claimed
    // size and then finds the body missing.
    let input = frame(GUEST_FRAME_MAX as u32, b"");
    let (res, peak) = peak_heap(|| read_frame::<GuestMessage>(&mut &input[..], GUEST_FRAME_MAX));
    assert!(matches!(res, Err(FrameError::Io(_))), "{res:?}");
    assert!(
        (GUEST_FRAME_MAX..GUEST_FRAME_MAX + 4096).contains(&peak),
        "{peak}"
    );
    let input = frame(GUEST_FRAME_MAX as u32 + 1, b"");
    let (res, peak) = peak_heap(|| read_frame::<GuestMessage>(&mut &input[..], GUEST_FRAME_MAX));
    assert!(matches!(res, Err(FrameError::TooLarge { .. })), "{res:?}");
    assert!(peak < 4096, "{peak}");
}
