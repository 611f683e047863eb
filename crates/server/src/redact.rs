//! What tenants are told about failures on the host: what failed, never
//! where. Image, snapshot, VM and store errors name host paths (the image
//! files, the console log kept for a post-mortem, the database); those stay
//! in the server's log, and the message a tenant sees has each path
//! replaced by `…`.

/// `detail` with every absolute path taken out. A path starts with `/` at
/// the start of a word (after a space, quote, bracket, `=`, `:`, `,` or `;`) and
/// runs to the next space, quote, parenthesis, comma or semicolon, or a
/// colon followed by a space (`/a/b: No such file`). A `/` inside a word,
/// as in `I/O`, is left alone.
pub fn host_paths(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut chars = detail.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let starts_word = prev.is_none_or(|p| p.is_whitespace() || "(\"'`=:[{<,;".contains(p));
        if c == '/' && starts_word {
            while let Some(&n) = chars.peek() {
                let ends = n.is_whitespace() || "\"'`(),;]}>".contains(n);
                if ends || (n == ':' && chars.clone().nth(1).is_none_or(char::is_whitespace)) {
                    break;
                }
                chars.next();
            }
            out.push('…');
            prev = Some('…');
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::host_paths;

    #[test]
    fn paths_go_and_the_rest_stays() {
        for (detail, shown) in [
            (
                "booting a python VM failed: reading /var/lib/ignis/images/python/layer.erofs: No such file or directory (os error 2)",
                "booting a python VM failed: reading …: No such file or directory (os error 2)",
            ),
            (
                "the agent hung up (console log in /var/lib/ignis/logs/vm-1a2b.log)",
                "the agent hung up (console log in …)",
            ),
            ("snapshot \"/tmp/x y\" is bad", "snapshot \"… y\" is bad"),
            // A colon inside a word stays with the path: both go.
            ("lowerdir=/a:/b,upper", "lowerdir=…,upper"),
            ("one /a,/b;/c", "one …,…;…"),
            ("an I/O error", "an I/O error"),
            ("/", "…"),
            ("", ""),
        ] {
            assert_eq!(host_paths(detail), shown, "{detail}");
        }
    }

    /// The problem documents of store and server failures: what failed,
    /// never where (the full error is in the server's log).
    #[test]
    fn problem_documents_of_failures_carry_no_host_path() {
        use crate::api::problem::Problem;
        use crate::service::ServiceError;
        let detail = "job store: opening /var/lib/ignis/data/ignis.db: disk I/O error";
        for e in [
            ServiceError::Unavailable(detail.into()),
            ServiceError::Internal(detail.into()),
        ] {
            let p = Problem::from(e);
            assert!(p.status >= 500, "{p:?}");
            let json = serde_json::to_string(&p).expect("json");
            assert!(!json.contains("/var"), "{json}");
            assert!(
                !p.detail.split_whitespace().any(|w| w.starts_with('/')),
                "{json}"
            );
        }
    }

    #[test]
    fn no_absolute_path_survives() {
        let detail = "a /x/y: b '/c' (/d/e.log) k=/f [/g] /h;/i,/j";
        let shown = host_paths(detail);
        assert!(
            !shown
                .split(|c: char| !c.is_alphanumeric() && c != '/')
                .any(|w| w.starts_with('/')),
            "{shown}"
        );
    }
}
