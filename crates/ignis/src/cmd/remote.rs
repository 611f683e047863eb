//! `ignis run --server URL`: submit through the API and stream the output
//! as the program writes it (Server-Sent Events), then exit like a local run.

use std::io::Write;

use anyhow::{bail, Context};
use base64::Engine as _;
use futures::StreamExt;
use ignis_protocol::RunRequest;
use ignis_vmm::RunReport;
use serde_json::{json, Value};

pub async fn run_remote(
    server: &str,
    api_key: Option<&str>,
    language: Option<&str>,
    req: &RunRequest,
    stream_output: bool,
) -> anyhow::Result<RunReport> {
    let base = server.trim_end_matches('/');
    let client = reqwest::Client::new();
    let auth = |b: reqwest::RequestBuilder| match api_key {
        Some(k) => b.bearer_auth(k),
        None => b,
    };
    let language = match language {
        Some(l) => l.to_owned(),
        None => language_for(&client, base, &auth, &req.files[0].name).await?,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({
        "language": language,
        "files": req.files.iter().map(|f| json!({
            "name": f.name, "content": b64.encode(&f.content), "encoding": "base64"
        })).collect::<Vec<_>>(),
        "stdin": b64.encode(&req.stdin),
        "stdin_encoding": "base64",
        "args": req.args,
        "env": req.env,
        "limits": {
            "timeout_ms": req.limits.timeout_ms,
            "memory_mib": req.limits.memory_mib,
            "max_output_kib": req.limits.max_output_kib,
            "max_processes": req.limits.max_processes,
        },
    });
    let res = auth(client.post(format!("{base}/v1/jobs")))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("submitting to {base}"))?;
    let job = api_json(res).await?;
    let id = job["id"]
        .as_str()
        .context("the server answered without a job id")?
        .to_owned();

    // Follow the job's events; the final `result` event carries the job.
    let res = auth(client.get(format!("{base}/v1/jobs/{id}/events")))
        .send()
        .await
        .context("opening the event stream")?;
    if !res.status().is_success() {
        api_json(res).await?;
        bail!("the event stream was refused");
    }
    let mut parser = SseParser::default();
    let mut bytes = res.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.context("reading the event stream")?;
        for (event, data) in parser.push(&chunk) {
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event.as_str() {
                "stdout" | "stderr" if stream_output => {
                    let text = v["data"].as_str().unwrap_or_default();
                    let _ = if event == "stdout" {
                        std::io::stdout()
                            .write_all(text.as_bytes())
                            .and_then(|_| std::io::stdout().flush())
                    } else {
                        std::io::stderr().write_all(text.as_bytes())
                    };
                }
                "result" => return finished(v),
                _ => {}
            }
        }
    }
    // The stream ended early (server restart?): ask for the job instead.
    let res = auth(client.get(format!("{base}/v1/jobs/{id}")))
        .send()
        .await?;
    finished(api_json(res).await?)
}

fn finished(job: Value) -> anyhow::Result<RunReport> {
    match job["status"].as_str() {
        Some("completed") => Ok(
            serde_json::from_value(job["result"].clone()).context("reading the job's result")?
        ),
        Some("canceled") => Ok(RunReport::internal_error("the job was canceled", None)),
        other => bail!("the job ended in an unexpected state {other:?}"),
    }
}

async fn api_json(res: reqwest::Response) -> anyhow::Result<Value> {
    let status = res.status();
    let v: Value = res.json().await.context("reading the server's answer")?;
    if !status.is_success() {
        bail!(
            "server refused ({status}): {}",
            v["detail"].as_str().unwrap_or(&v.to_string())
        );
    }
    Ok(v)
}

async fn language_for(
    client: &reqwest::Client,
    base: &str,
    auth: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    file: &str,
) -> anyhow::Result<String> {
    let ext = std::path::Path::new(file)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let langs = api_json(
        auth(client.get(format!("{base}/v1/languages")))
            .send()
            .await?,
    )
    .await?;
    langs
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| {
            l["extensions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e.as_str() == Some(&ext))
        })
        .and_then(|l| l["name"].as_str().map(String::from))
        .with_context(|| format!("the server has no language for {file:?}; pass --language"))
}

/// A minimal `text/event-stream` parser: `event:` and `data:` lines, blank
/// line ends an event.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    out.push((
                        std::mem::take(&mut self.event),
                        std::mem::take(&mut self.data),
                    ));
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: stdout\nda").is_empty());
        let got = p.push(b"ta: {\"data\":\"hi\"}\n\n: keep-alive\n\nevent: result\ndata: {}\n\n");
        assert_eq!(
            got,
            vec![
                ("stdout".to_string(), "{\"data\":\"hi\"}".to_string()),
                ("result".to_string(), "{}".to_string())
            ]
        );
    }
}
