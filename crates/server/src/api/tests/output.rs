//! Outputs are bytes: text when they are UTF-8 (saying so when they are
//! not), base64 on request, and never in listings.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::*;

fn printed(stdout: Vec<u8>, stderr: &[u8]) -> ignis_vmm::RunReport {
    let mut r = ignis_vmm::RunReport::internal_error("x", None);
    r.status = ignis_protocol::Verdict::Ok;
    r.exit_code = Some(0);
    r.message = None;
    r.stdout = stdout;
    r.stderr = stderr.to_vec();
    r
}

#[tokio::test]
async fn outputs_come_as_text_or_exact_base64() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let id = h.submit(&key).await;
    let bytes = vec![b'o', b'k', 0xff, 0x00, 0x01, b'\n'];
    h.play_worker(printed(bytes.clone(), "é\n".as_bytes()))
        .await
        .expect("worker");

    let text = h.get(&format!("/v1/jobs/{id}"), Some(&key)).await;
    let r = &text.assert_status(StatusCode::OK).json()["result"];
    assert_eq!(r["encoding"], "utf8");
    assert_eq!(r["stdout"], "ok\u{fffd}\u{0}\u{1}\n");
    assert_eq!(r["stdout_lossy"], true, "says the text is not the bytes");
    assert_eq!(
        (r["stderr"].as_str(), &r["stderr_lossy"]),
        (Some("é\n"), &json!(false))
    );

    let b64 = h
        .get(&format!("/v1/jobs/{id}?encoding=base64"), Some(&key))
        .await;
    let r = &b64.assert_status(StatusCode::OK).json()["result"];
    assert_eq!(r["encoding"], "base64");
    let stdout = STANDARD
        .decode(r["stdout"].as_str().expect("stdout"))
        .expect("base64");
    assert_eq!(stdout, bytes, "exact bytes");
    assert_eq!(r["stderr"], STANDARD.encode("é\n"));
    assert_eq!(r["stdout_lossy"], false);

    let bad = h
        .get(&format!("/v1/jobs/{id}?encoding=hex"), Some(&key))
        .await;
    bad.assert_problem(StatusCode::BAD_REQUEST, "invalid-query");
}

#[tokio::test]
async fn waiting_can_ask_for_base64() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    let worker = h.play_worker(printed(vec![0xc3, 0x28], b""));
    let r = h
        .post("/v1/jobs?wait=true&encoding=base64", Some(&key), &hello())
        .await;
    worker.await.expect("worker");
    let r = &r.assert_status(StatusCode::OK).json()["result"];
    assert_eq!(r["stdout"], STANDARD.encode([0xc3, 0x28]));
}

/// A page of jobs that each printed 256 KiB of control bytes stays small:
/// listings carry summaries, and the store does not even read the outputs.
#[tokio::test]
async fn listings_carry_no_outputs() {
    let h = harness();
    let (key, _) = h.key(None, None).await;
    for _ in 0..5 {
        h.submit(&key).await;
        h.play_worker(printed(vec![0x01; 256 * 1024], &[0x02; 1024]))
            .await
            .expect("worker");
    }
    let page = h.get("/v1/jobs?limit=100", Some(&key)).await;
    page.assert_status(StatusCode::OK);
    assert!(page.body.len() < 8 * 1024, "{} bytes", page.body.len());
    let jobs = page.json()["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 5);
    for j in &jobs {
        assert_eq!(
            (j["status"].as_str(), j["verdict"].as_str()),
            (Some("completed"), Some("ok"))
        );
        assert!(
            j.get("result").is_none() && j.get("stdout").is_none(),
            "{j}"
        );
    }
    let one = h
        .get(
            &format!("/v1/jobs/{}", jobs[0]["id"].as_str().expect("id")),
            Some(&key),
        )
        .await;
    let r = &one.assert_status(StatusCode::OK).json()["result"];
    assert_eq!(r["stdout"].as_str().map(str::len), Some(256 * 1024));
}
