//! Tests of `webhook.rs`, kept apart to keep the module readable.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request as a receiver saw it: the head (lowercased) and the body.
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("\r\n{name}: ");
        let start = self.head.find(&prefix)? + prefix.len();
        self.head[start..].split("\r\n").next()
    }
}

/// A raw HTTP/1.1 receiver on 127.0.0.1 answering the i-th request with
/// `statuses[i]` (the last one repeating).
async fn receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?token=t", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for i in 0.. {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            let (head, body) = loop {
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = Received {
                        head: text[..end + 2].to_owned(),
                        body: vec![],
                    }
                    .header("content-length")
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                    if buf.len() >= end + 4 + len {
                        break (text[..end + 2].to_owned(), buf[end + 4..].to_vec());
                    }
                }
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-request");
                buf.extend_from_slice(&chunk[..n]);
            };
            tx.send(Received { head, body }).unwrap();
            let status = statuses[i.min(statuses.len() - 1)];
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

fn fast_policy(attempts: u32) -> RetryPolicy {
    let ms = Duration::from_millis;
    RetryPolicy {
        attempts,
        first_delay: ms(1),
        max_delay: ms(5),
        timeout: ms(5000),
    }
}

#[tokio::test]
async fn body_arrives_intact_and_signed() {
    let (url, mut rx) = receiver(vec![204]).await;
    let sender = WebhookSender::new(b"s3cret".to_vec(), true, fast_policy(1));
    let body = "{\"id\":\"j1\",\"stdout\":\"café ✓\\n\"}".as_bytes();
    assert_eq!(sender.deliver_now(&url, body).await.unwrap(), 204);
    let got = rx.recv().await.unwrap();
    assert_eq!(got.body, body);
    let ts = got.header("x-ignis-timestamp").expect("a timestamp");
    let sig = got.header("x-ignis-signature").expect("a signature");
    assert_eq!(
        sig,
        sign(b"s3cret", ts.parse().expect("unix seconds"), body)
    );
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        verify(b"s3cret", ts, sig, body, now, TIMESTAMP_TOLERANCE),
        Ok(())
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-ignis-delivery"), Some("1"));
    assert!(got
        .header("user-agent")
        .unwrap()
        .starts_with("ignis-webhook/"));
}

#[tokio::test]
async fn retries_until_success() {
    let (url, mut rx) = receiver(vec![500, 500, 200]).await;
    let sender = WebhookSender::new(b"k".to_vec(), true, fast_policy(5));
    assert!(sender.deliver_with_retries(&url, b"{}").await);
    let seen: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|r| r.header("x-ignis-delivery").unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["1", "2", "3"]);
    assert_eq!(sender.stats(), (1, 0));
}

#[tokio::test]
async fn deliver_gives_up_after_attempts() {
    let (url, mut rx) = receiver(vec![503]).await;
    let sender = WebhookSender::new(b"k".to_vec(), true, fast_policy(2));
    sender.deliver(url, b"{}".to_vec()); // returns at once
    tokio::time::timeout(Duration::from_secs(5), async {
        while sender.stats() != (0, 1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
}

#[tokio::test]
async fn private_address_refused_without_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let sender = WebhookSender::new(b"k".to_vec(), false, fast_policy(3));
    let err = sender.deliver_now(&url, b"{}").await.unwrap_err();
    assert!(matches!(err, WebhookError::NotPublic(_)), "{err}");
    assert!(!sender.deliver_with_retries(&url, b"{}").await);
    assert_eq!(sender.stats(), (0, 1));
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a connection was made");
}

#[tokio::test]
async fn names_connect_through_the_pinned_addresses() {
    // "localhost" (allowed here) goes through lookup_host and the pinned
    // override; were the override missed, NoResolve would fail the request.
    let (url, mut rx) = receiver(vec![200]).await;
    let url = url.replace("127.0.0.1", "localhost");
    let sender = WebhookSender::new(b"k".to_vec(), true, fast_policy(1));
    assert_eq!(sender.deliver_now(&url, b"{}").await.unwrap(), 200);
    assert!(rx.recv().await.is_some());
}

#[test]
fn every_resolved_address_is_checked() {
    let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
    let private: SocketAddr = "[fd00::1]:443".parse().unwrap();
    assert!(check_addrs("h", &[public], false).is_ok());
    // One bad answer among good ones is enough to refuse (rebinding).
    assert!(check_addrs("h", &[public, private], false).is_err());
    assert!(check_addrs("h", &[public, private], true).is_ok());
    assert!(check_addrs("h", &[], true).is_err());
}

#[test]
fn check_url_table() {
    let public = "https://example.com/hook http://8.8.8.8:8080/x?y=1 https://1.1.1.1
        http://172.32.0.1/ http://100.128.0.1/ http://192.169.0.1/ http://[2606:4700::1111]/
        http://[2002:808:808::1]/ http://[::ffff:8.8.8.8]/ https://localhost.example.com/";
    for url in public.split_whitespace() {
        assert!(check_url(url, false).is_ok(), "{url} should be allowed");
    }
    let private = "http://127.0.0.1/ http://127.9.9.9:8080/ http://2130706433/
        http://0x7f.1/ http://0.0.0.0/ http://10.0.0.1/ http://172.16.0.1/
        http://172.31.255.255/ http://192.168.1.1/ http://169.254.169.254/latest/meta-data
        http://100.64.0.1/ http://100.127.255.255/ http://255.255.255.255/ http://224.0.0.1/
        http://240.0.0.1/ http://192.0.2.1/ http://198.51.100.7/ http://203.0.113.9/
        http://198.18.0.1/ http://[::1]/ http://[::]/ http://[fe80::1]/ http://[febf::1]/
        http://[fc00::1]/ http://[fd12:3456::1]/ http://[ff02::1]/ http://[2001:db8::1]/
        http://[::ffff:127.0.0.1]/ http://[::ffff:10.0.0.1]/ http://[::ffff:169.254.169.254]/
        http://[::127.0.0.1]/ http://[64:ff9b::a00:1]/ http://[2002:7f00:1::]/
        http://localhost/ http://LOCALHOST:3000/ http://localhost./ http://api.localhost/";
    for url in private.split_whitespace() {
        let err = check_url(url, false).expect_err(url);
        assert!(matches!(err, WebhookError::NotPublic(_)), "{url}: {err}");
        assert!(
            check_url(url, true).is_ok(),
            "{url} allowed with allow_private"
        );
    }
    let bad = [
        ("ftp://example.com/", "Scheme"),
        ("file:///etc/passwd", "Scheme"),
        ("javascript:alert(1)", "Scheme"),
        ("http://user:pw@example.com/", "UserInfo"),
        ("http://user@example.com/", "UserInfo"),
        ("not a url", "InvalidUrl"),
        ("http://", "InvalidUrl"),
    ];
    for (url, kind) in bad {
        let err = check_url(url, true).expect_err(url);
        assert!(format!("{err:?}").starts_with(kind), "{url}: {err:?}");
    }
}

#[test]
fn signature_backoff_and_redaction() {
    // RFC 4231, test case 2.
    // RFC 4231 test case 2 is HMAC("Jefe", "what do ya want for nothing?");
    // here the message is "<timestamp>.<body>".
    let sig = sign(b"Jefe", 1_700_000_000, b"what do ya want for nothing?");
    let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
    mac.update(b"1700000000.what do ya want for nothing?");
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, want);
    let p = RetryPolicy::default();
    let delays: Vec<u64> = (1..=8).map(|n| p.delay_after(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(p.delay_after(u32::MAX), p.max_delay);
    assert_eq!(
        redact("https://u:p@h.example/x?token=1#f"),
        "https://h.example/x"
    );
}

/// A delivery captured off the wire and sent again later is refused by a
/// receiver that checks the signed timestamp; so is one whose timestamp was
/// changed to look fresh, since the signature covers it.
#[tokio::test]
async fn a_captured_delivery_cannot_be_replayed_later() {
    let (url, mut rx) = receiver(vec![200]).await;
    let sender = WebhookSender::new(b"k3y".to_vec(), true, fast_policy(1));
    let body = br#"{"status":"completed"}"#;
    sender.deliver_now(&url, body).await.expect("delivered");
    let got = rx.recv().await.expect("received");
    let ts = got
        .header("x-ignis-timestamp")
        .expect("timestamp")
        .to_owned();
    let sig = got
        .header("x-ignis-signature")
        .expect("signature")
        .to_owned();
    let sent: i64 = ts.parse().expect("unix seconds");
    let tol = TIMESTAMP_TOLERANCE;
    assert_eq!(verify(b"k3y", &ts, &sig, body, sent, tol), Ok(()));
    let an_hour_later = sent + 3600;
    assert_eq!(
        verify(b"k3y", &ts, &sig, body, an_hour_later, tol),
        Err(VerifyError::Stale(3600))
    );
    let fresh = an_hour_later.to_string();
    assert_eq!(
        verify(b"k3y", &fresh, &sig, body, an_hour_later, tol),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(b"other", &ts, &sig, body, sent, tol),
        Err(VerifyError::BadSignature)
    );
}

/// A delivery recorded by a process that stopped before sending it is sent
/// by the next one at start-up, signed, and its record cleared.
#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    use crate::store::sqlite::SqliteStore;
    use crate::store::JobStore;

    let (url, mut rx) = receiver(vec![200]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ignis.db");
    let job = uuid::Uuid::now_v7();
    let body = br#"{"status":"completed"}"#;
    {
        // The process that ended the job, and stopped before delivering.
        let before = SqliteStore::open(&db).unwrap();
        before.webhook_pending(job, &url, body).await.unwrap();
    }
    let mut cfg = crate::config::ServerConfig::new(dir.path().to_path_buf());
    cfg.allow_private_webhooks = true;
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let launcher =
        crate::test_kit::fake_launcher(dir.path(), ignis_vmm::driver::fake::FakeDriver::default());
    let svc = crate::embedded::assemble(cfg, launcher, store.clone(), b"s".to_vec());
    crate::service::resume_webhooks(&svc).await.unwrap();

    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("delivered within the hang guard")
        .expect("a delivery");
    assert_eq!(got.body, body);
    let ts = got.header("x-ignis-timestamp").expect("timestamp");
    let sig = got.header("x-ignis-signature").expect("signature");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        verify(b"s", ts, sig, body, now, TIMESTAMP_TOLERANCE),
        Ok(())
    );
    // The record goes once the delivery is over.
    tokio::time::timeout(Duration::from_secs(60), async {
        while !store.webhooks_pending().await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the record cleared within the hang guard");
}
