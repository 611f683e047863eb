//! The conformance suite, continued: outputs as bytes, pending webhooks,
//! recovery's list of waiting jobs and atomic admission.

use super::*;

/// What a program printed comes back byte for byte (control bytes, bytes
/// that are not UTF-8, NUL), from `get`; a listing leaves outputs unread.
pub(crate) async fn outputs_are_exact_bytes_and_listings_skip_them(s: &dyn JobStore) {
    let j = job("alice", "python");
    s.insert(&j).await.unwrap();
    start(s, j.id, t(1)).await;
    let mut r = report();
    r.stdout = [vec![0x01; 64 * 1024], vec![0xff, 0xfe, 0x00, b'\n']].concat();
    r.stderr = "é\u{0}".as_bytes().to_vec();
    s.complete(j.id, 1, &r, Timings::default(), t(2))
        .await
        .unwrap();
    let got = s.get("alice", j.id).await.unwrap().unwrap();
    assert_eq!(got.result.as_ref(), Some(&r));
    assert_eq!(
        s.get_any(j.id).await.unwrap().unwrap().result,
        Some(r.clone())
    );
    let listed = s.list("alice", &q(10)).await.unwrap();
    let listed = listed[0].result.as_ref().expect("a listed result");
    assert_eq!(
        (listed.status, listed.stdout.len(), listed.stderr.len()),
        (Verdict::Ok, 0, 0),
        "a listing reads no outputs"
    );
    // A job inserted with its result keeps the bytes too.
    let mut done = job("alice", "python");
    done.status = JobStatus::Completed;
    done.result = Some(r.clone());
    s.insert(&done).await.unwrap();
    assert_eq!(s.get("alice", done.id).await.unwrap(), Some(done));
}

pub(crate) async fn pending_webhooks_are_kept_until_done(s: &dyn JobStore) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    s.webhook_pending(a, "https://a.example/hook", b"{\"x\":1}")
        .await
        .unwrap();
    s.webhook_pending(b, "https://b.example/hook", &[0, 0xff])
        .await
        .unwrap();
    // Recorded again (a second end published): one delivery, the latest.
    s.webhook_pending(a, "https://a.example/hook", b"{\"x\":2}")
        .await
        .unwrap();
    let pending = s.webhooks_pending().await.unwrap();
    let mut jobs: Vec<Uuid> = pending.iter().map(|p| p.job).collect();
    jobs.sort();
    assert_eq!(jobs, vec![a, b]);
    assert!(pending.contains(&PendingWebhook {
        job: a,
        url: "https://a.example/hook".into(),
        body: b"{\"x\":2}".to_vec(),
    }));
    s.webhook_done(a).await.unwrap();
    s.webhook_done(a).await.unwrap();
    let left = s.webhooks_pending().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].job, left[0].body.as_slice()),
        (b, &[0u8, 0xff][..])
    );
}

pub(crate) async fn waiting_lists_queued_jobs_with_owners(s: &dyn JobStore) {
    let (a, b, c) = (job("alice", "python"), job("bob", "go"), job("alice", "c"));
    for j in [&a, &b, &c] {
        s.insert(j).await.unwrap();
    }
    start(s, b.id, t(1)).await;
    let got: Vec<_> = s
        .waiting()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.owner, w.language))
        .collect();
    let want = [&a, &c].map(|j| (j.id, j.owner.clone(), j.language.clone()));
    assert_eq!(got, want);
}

/// Fifty submissions of one owner at once, through two handles on the
/// database, against `max_queued` = 5: exactly five get in.
pub(crate) async fn admission_is_atomic(f: &Fixture) {
    let stores = [f.a.clone(), f.b.clone()];
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = stores[i % 2].clone();
            tokio::spawn(async move { s.insert_within(&job("alice", "python"), Some(5)).await })
        })
        .collect();
    let (mut inserted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Admission::Inserted => inserted += 1,
            Admission::Refused { queued } => {
                assert_eq!(queued, 5);
                refused += 1;
            }
        }
    }
    assert_eq!((inserted, refused), (5, 45));
    assert_eq!(f.a.count_queued("alice").await.unwrap(), 5);
    // Another owner has its own allowance; no limit is no limit.
    let bob = f.b.insert_within(&job("bob", "python"), Some(1)).await;
    assert_eq!(bob.unwrap(), Admission::Inserted);
    let free = f.a.insert_within(&job("alice", "python"), None).await;
    assert_eq!(free.unwrap(), Admission::Inserted);
    // A job that leaves the queue makes room for one more.
    let first = f.a.waiting().await.unwrap()[0].id;
    start(&*f.a, first, t(1)).await;
    let j = job("alice", "python");
    assert_eq!(
        f.b.insert_within(&j, Some(6)).await.unwrap(),
        Admission::Inserted
    );
    assert_eq!(
        f.b.insert_within(&job("alice", "python"), Some(6))
            .await
            .unwrap(),
        Admission::Refused { queued: 6 }
    );
}
