//! The host's end of the agent channel. Everything read here comes from the
//! guest and is hostile until checked: frames are size-capped before any
//! allocation, messages must parse strictly, and the caller enforces order.

use ignis_protocol::{
    check_len, decode, encode, FrameError, GuestMessage, HostMessage, GUEST_FRAME_MAX,
    HOST_FRAME_MAX, LEN_PREFIX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A framed connection to one agent, over any byte stream.
#[derive(Debug)]
pub struct AgentConn<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AgentConn<S> {
    pub fn new(stream: S) -> Self {
        AgentConn { stream }
    }

    pub async fn recv(&mut self) -> Result<GuestMessage, FrameError> {
        let mut prefix = [0u8; LEN_PREFIX];
        match self.stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let len = check_len(prefix, GUEST_FRAME_MAX)?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        decode(&body)
    }

    pub async fn send(&mut self, msg: &HostMessage) -> Result<(), FrameError> {
        let frame = encode(msg, HOST_FRAME_MAX)?;
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lying_length_is_refused_without_reading_on() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = AgentConn::new(a);
        b.write_all(&(64u32 * 1024 * 1024).to_be_bytes())
            .await
            .expect("write");
        assert!(matches!(
            conn.recv().await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = AgentConn::new(a);
        b.write_all(&5u32.to_be_bytes()).await.expect("write");
        b.write_all(b"hello").await.expect("write");
        assert!(matches!(conn.recv().await, Err(FrameError::Malformed(_))));
    }
}
