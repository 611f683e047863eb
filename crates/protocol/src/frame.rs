//! Length-prefixed frames with a size cap checked before allocation.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::Envelope;
use crate::PROTOCOL_VERSION;

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest frame the host sends (a run request with its files and stdin).
pub const HOST_FRAME_MAX: usize = 24 * 1024 * 1024;
/// Largest frame the guest may send; output comes in chunks far below this.
pub const GUEST_FRAME_MAX: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("channel closed")]
    Closed,
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("peer speaks protocol version {got}, this side speaks {PROTOCOL_VERSION}")]
    Version { got: u32 },
}

/// Serializes `msg` into one frame (prefix included).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LEN_PREFIX];
    serde_json::to_writer(
        &mut out,
        &Envelope {
            v: PROTOCOL_VERSION,
            msg,
        },
    )?;
    let len = out.len() - LEN_PREFIX;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Parses one frame body (without its prefix) and checks the version.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let env: Envelope<T> = serde_json::from_slice(body)?;
    if env.v != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: env.v });
    }
    Ok(env.msg)
}

/// Checks a length prefix against the cap; shared by the sync and async readers.
pub fn check_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Blocking read of one message; `Closed` on a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read, max: usize) -> Result<T, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = check_len(prefix, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// Blocking write of one message.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    let frame = encode(msg, max)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestMessage, Stream};

    #[test]
    fn round_trip_through_a_byte_stream() {
        let msg = GuestMessage::Output {
            stream: Stream::Stderr,
            data: vec![0, 159, 146, 150, b'\n'],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg, GUEST_FRAME_MAX).expect("encode");
        let back: GuestMessage = read_frame(&mut buf.as_slice(), GUEST_FRAME_MAX).expect("decode");
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut buf = (u32::MAX).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<GuestMessage>(&mut buf.as_slice(), GUEST_FRAME_MAX).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn other_versions_are_refused() {
        let body = br#"{"v":99,"msg":{"type":"pong"}}"#;
        let err = decode::<GuestMessage>(body).unwrap_err();
        assert!(matches!(err, FrameError::Version { got: 99 }));
    }

    #[test]
    fn unknown_fields_are_refused() {
        for body in [
            &br#"{"v":2,"msg":{"type":"phase","phase":"running","extra":1}}"#[..],
            br#"{"v":2,"msg":{"type":"pong"},"extra":1}"#,
            br#"{"v":2,"msg":{"type":"result","status":"ok","exit_code":0,"signal":null,"compile_output":null,"compile_ms":null,"duration_ms":1,"cpu_ms":1,"memory_kib":1,"stdout_truncated":false,"stderr_truncated":false,"message":null,"extra":1}}"#,
            br#"{"v":2,"msg":{"type":"resumed","vm_id":"a","reseeded":true,"extra":1}}"#,
        ] {
            assert!(
                matches!(decode::<GuestMessage>(body), Err(FrameError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_resume_round_trips_and_refuses_unknown_fields() {
        let msg = crate::HostMessage::Resume(crate::Resume {
            entropy: vec![0, 255, 7],
            unix_time_ms: 1_800_000_000_123,
            vm_id: "0123456789ab".into(),
        });
        let frame = encode(&msg, HOST_FRAME_MAX).expect("encode");
        let back: crate::HostMessage = decode(&frame[LEN_PREFIX..]).expect("decode");
        assert_eq!(back, msg);
        let body = br#"{"v":2,"msg":{"type":"resume","entropy":"AA==","unix_time_ms":1,"vm_id":"x","extra":1}}"#;
        assert!(matches!(
            decode::<crate::HostMessage>(body),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn end_of_stream_is_closed_not_io() {
        let err = read_frame::<GuestMessage>(&mut [].as_slice(), GUEST_FRAME_MAX).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }
}
