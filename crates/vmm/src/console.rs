//! The guest's serial console (and QEMU's own complaints), kept as a bounded
//! tail in memory. It is written to a log file only when something failed,
//! so a healthy VM leaves no file behind and a hostile guest cannot fill the
//! disk by printing.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of the console is kept, from the end.
const TAIL_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Console {
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    /// Starts copying `src` into the tail until it closes.
    pub fn capture(&self, mut src: impl AsyncRead + Unpin + Send + 'static) {
        let tail = Arc::clone(&self.tail);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => push(&tail, &buf[..n]),
                }
            }
        });
    }

    pub fn note(&self, line: &str) {
        push(&self.tail, line.as_bytes());
    }

    pub fn contents(&self) -> Vec<u8> {
        self.tail.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn push(tail: &Mutex<Vec<u8>>, data: &[u8]) {
    // A poisoned lock only means another copier panicked mid-push; the bytes
    // are still worth keeping.
    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
    t.extend_from_slice(data);
    if t.len() > TAIL_MAX {
        let cut = t.len() - TAIL_MAX;
        t.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tail_is_kept() {
        let c = Console::default();
        for _ in 0..100 {
            c.note(&"x".repeat(10_000));
        }
        c.note("END");
        let got = c.contents();
        assert_eq!(got.len(), TAIL_MAX);
        assert!(got.ends_with(b"END"));
    }
}
