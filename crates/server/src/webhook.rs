//! Webhooks: when a job with a `webhook_url` ends, its JSON is POSTed there.
//!
//! A webhook URL is user input that makes the server open a connection to an
//! address of the user's choosing, the classic SSRF shape: without checks a
//! job could reach the cloud metadata service, the admin side of the LAN or
//! the server's own loopback. Two checks guard it. [`check_url`] runs at
//! submission and refuses IP literals and `localhost` names outside the public
//! internet, so a bad URL gets a clear 422 instead of a silent failed
//! delivery. At delivery the host is resolved once, *every* address is checked
//! and the connection is pinned to exactly those addresses, so a DNS answer
//! that changes between check and connect (DNS rebinding) cannot slip in.
//!
//! Receivers authenticate a delivery by recomputing [`sign`] over the
//! `X-Ignis-Timestamp` header, a `.` and the raw body with the shared secret
//! and comparing it to the `X-Ignis-Signature` header ([`verify`] does it).
//! The timestamp is inside what is signed, so a receiver that refuses old
//! timestamps cannot be made to accept a captured delivery replayed later.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Ignis-Signature";
/// Header carrying the unix time (seconds) at which this attempt was signed;
/// the signature covers it.
pub const TIMESTAMP_HEADER: &str = "X-Ignis-Timestamp";
/// How far from its receiver's clock [`verify`] accepts a timestamp by
/// default: a replay must come within this long of the original.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);
/// Header carrying the attempt number (1-based), so a receiver can tell a
/// retry from a new event and deduplicate.
pub const DELIVERY_HEADER: &str = "X-Ignis-Delivery";
const USER_AGENT: &str = concat!("ignis-webhook/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    #[error("webhook URL scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("webhook URL has no host")]
    NoHost,
    #[error("webhook URL must not contain a user name or password")]
    UserInfo,
    #[error("webhook host {0} is not a public internet address")]
    NotPublic(String),
    #[error("resolving webhook host {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("webhook request failed: {0}")]
    Http(String),
    #[error("webhook receiver answered HTTP {0}")]
    Status(u16),
}

impl WebhookError {
    /// A refused or malformed URL stays refused, so retrying it only delays
    /// the give-up; network errors and non-2xx answers may be transient.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            WebhookError::InvalidUrl(_)
                | WebhookError::Scheme(_)
                | WebhookError::NoHost
                | WebhookError::UserInfo
                | WebhookError::NotPublic(_)
        )
    }
}

/// Checks a webhook URL: http or https, a host, no userinfo (credentials in a
/// URL end up in logs), and unless `allow_private`, a host that is not an IP
/// literal outside the public internet nor a `localhost` name. Names are only
/// resolved at delivery, where the DNS-rebinding guard runs.
pub fn check_url(url: &str, allow_private: bool) -> Result<Url, WebhookError> {
    let parsed = Url::parse(url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::Scheme(parsed.scheme().to_owned()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::UserInfo);
    }
    // For http(s) the parser has already normalised odd IPv4 spellings
    // (`2130706433`, `0x7f.1`) to dotted quads and lowercased names.
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(WebhookError::NoHost)?;
    if !allow_private {
        let refused = match host_ip(host) {
            Some(ip) => !is_public(ip),
            None => is_localhost_name(host),
        };
        if refused {
            return Err(WebhookError::NotPublic(host.to_owned()));
        }
    }
    Ok(parsed)
}

/// The IP address of a URL host that is an IP literal (`[..]` for IPv6).
fn host_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// `localhost` and `*.localhost` resolve to loopback by convention (RFC 6761),
/// often without DNS, so they are refused by name.
fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Whether `ip` is an ordinary public unicast address a webhook may reach.
/// Written out by hand because `IpAddr::is_global` is not stable.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", including the unspecified address
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT shared space
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 168) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved 240/4, broadcast
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || s[0] & 0xff00 == 0xff00 // multicast
        || s[0] & 0xffc0 == 0xfe80 // link-local
        || s[0] & 0xffc0 == 0xfec0 // site-local (deprecated, still routed inside some sites)
        || s[0] & 0xfe00 == 0xfc00 // unique local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] & 0xfff0 == 0x3ff0 // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments, Teredo
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1); // local-use NAT64
    !special
}

/// The IPv4 address an IPv6 address stands for, where the forms route to it:
/// IPv4-mapped (what a dual-stack socket shows for IPv4 peers), the old
/// IPv4-compatible and IPv4-translated forms, NAT64 and 6to4. Checking the
/// embedded address stops `[::ffff:127.0.0.1]` from being a way around.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => v4(hi, lo), // ::ffff:a.b.c.d, mapped
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => v4(hi, lo), // ::ffff:0:a.b.c.d, translated
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo), // NAT64
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => v4(hi, lo), // ::a.b.c.d, not :: or ::1
        [0x2002, hi, lo, ..] => v4(hi, lo),            // 6to4
        _ => None,
    }
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the
/// `X-Ignis-Signature` value for a delivery whose `X-Ignis-Timestamp` is
/// `timestamp` (Stripe's scheme: the time is signed with the body).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed first), so
    // `new_from_slice` cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a receiver refuses a delivery ([`verify`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now: too old (a replay?) or from the future")]
    Stale(i64),
    #[error("the signature does not match")]
    BadSignature,
}

/// What a receiver does with a delivery: checks that `signature` is the
/// secret's over `timestamp` and `body`, in constant time, and that
/// `timestamp` is within `tolerance` of `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let given = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(VerifyError::BadSignature)?;
    mac(secret, ts, body)
        .verify_slice(&given)
        .map_err(|_| VerifyError::BadSignature)?;
    let skew = now.saturating_sub(ts);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale(skew));
    }
    Ok(())
}

/// How hard to try before giving up on a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 is treated as 1).
    pub attempts: u32,
    /// Pause after the first failure; it doubles after each further one.
    pub first_delay: Duration,
    /// Cap on the pause, so a long policy does not wait hours.
    pub max_delay: Duration,
    /// Per attempt: DNS, connect, send and the response head.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// About a minute of retrying (1+2+4+8 s) rides out a receiver restart
    /// without holding undeliverable hooks for long.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Sends webhooks in the background. Cloning shares the secret and counters.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    secret: Secret,
    allow_private: bool,
    policy: RetryPolicy,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// The HMAC key, kept out of Debug output because that ends up in logs.
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl WebhookSender {
    /// `allow_private` turns off the address checks, for development setups
    /// whose receiver runs on the same host or LAN.
    pub fn new(secret: Vec<u8>, allow_private: bool, policy: RetryPolicy) -> WebhookSender {
        WebhookSender {
            inner: Arc::new(Inner {
                secret: Secret(secret),
                allow_private,
                policy,
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// `(delivered, failed)` deliveries so far, each counted once at its
    /// final outcome (retries are not failures), for the metrics endpoint.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.delivered.load(Ordering::Relaxed),
            self.inner.failed.load(Ordering::Relaxed),
        )
    }

    /// Delivers `body` to `url` with retries on a spawned task and returns at
    /// once, so a slow or dead receiver never holds up a worker. Must be called
    /// inside a tokio runtime.
    pub fn deliver(&self, url: String, body: Vec<u8>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.deliver_with_retries(&url, &body).await;
        });
    }

    /// The retry loop behind [`WebhookSender::deliver`]; true once a receiver
    /// answered 2xx. Updates [`WebhookSender::stats`].
    pub async fn deliver_with_retries(&self, url: &str, body: &[u8]) -> bool {
        let policy = self.inner.policy;
        let attempts = policy.attempts.max(1);
        let target = redact(url);
        for attempt in 1..=attempts {
            match self.attempt(url, body, attempt).await {
                Ok(status) => {
                    self.inner.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%target, attempt, status, "webhook delivered");
                    return true;
                }
                Err(error) if error.is_permanent() => {
                    tracing::warn!(%target, %error, "webhook refused; not retrying");
                    break;
                }
                Err(error) if attempt < attempts => {
                    let delay = policy.delay_after(attempt);
                    tracing::info!(%target, attempt, %error, ?delay, "webhook attempt failed; will retry");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    tracing::warn!(%target, attempts, %error, "webhook delivery failed; giving up");
                }
            }
        }
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// One attempt, with the status on 2xx. Does not touch the counters,
    /// which count deliveries, not attempts.
    pub async fn deliver_now(&self, url: &str, body: &[u8]) -> Result<u16, WebhookError> {
        self.attempt(url, body, 1).await
    }

    async fn attempt(&self, url: &str, body: &[u8], attempt: u32) -> Result<u16, WebhookError> {
        let allow_private = self.inner.allow_private;
        let timeout = self.inner.policy.timeout;
        let url = check_url(url, allow_private)?;
        let host = url.host_str().ok_or(WebhookError::NoHost)?;
        // http and https always have a default port.
        let port = url.port_or_known_default().ok_or(WebhookError::NoHost)?;
        let addrs = resolve_checked(host, port, allow_private, timeout).await?;

        let mut builder = reqwest::Client::builder()
            // A redirect would be a second, unchecked destination.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the name itself, undoing the pinning.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(USER_AGENT)
            // Any name not pinned below fails instead of reaching the system
            // resolver, so nothing unchecked is ever connected to.
            .dns_resolver(Arc::new(NoResolve));
        if host_ip(host).is_none() {
            builder = builder.resolve_to_addrs(host, &addrs);
        }
        let client = builder.build().map_err(http_error)?;
        // Signed at each attempt, so a retry after a long pause is fresh.
        let now = chrono::Utc::now().timestamp();
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, sign(&self.inner.secret.0, now, body))
            .header(DELIVERY_HEADER, attempt.to_string())
            .body(body.to_vec())
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(WebhookError::Status(status.as_u16()))
        }
    }
}

/// Resolves `host` once and checks every address: if any is non-public the
/// name is refused, since the connector might pick that one.
async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, WebhookError> {
    let dns_error = |reason: String| WebhookError::Dns {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = match host_ip(host) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(e)) => return Err(dns_error(e.to_string())),
            Err(_) => return Err(dns_error("timed out".to_owned())),
        },
    };
    check_addrs(host, &addrs, allow_private)?;
    Ok(addrs)
}

fn check_addrs(host: &str, addrs: &[SocketAddr], allow_private: bool) -> Result<(), WebhookError> {
    if addrs.is_empty() {
        return Err(WebhookError::Dns {
            host: host.to_owned(),
            reason: "no addresses".to_owned(),
        });
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(WebhookError::NotPublic(format!("{host} ({})", bad.ip())));
        }
    }
    Ok(())
}

/// A resolver that refuses every name; see its use in `attempt`.
struct NoResolve;

impl reqwest::dns::Resolve for NoResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let msg = format!("{} is not a checked webhook address", name.as_str());
        Box::pin(async move { Err(msg.into()) })
    }
}

/// reqwest's message with its causes ("connection refused" hides in a
/// source), and without the URL, whose query may hold a token.
fn http_error(error: reqwest::Error) -> WebhookError {
    let error = error.without_url();
    let mut msg = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    WebhookError::Http(msg)
}

/// The URL for logs: no userinfo, query or fragment, which may hold secrets.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            // Fails only for URLs that cannot have userinfo; nothing to strip then.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid URL>".to_owned(),
    }
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
