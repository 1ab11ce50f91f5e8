//! Turn requests are single-use: one seen on the wire cannot be replayed.

use std::sync::Arc;

use pd_ledger::file_store::FileStore;
use pd_ledger::testkit::deployed;
use pd_ledger::Hash;
use pd_server::api::{router, ServeOptions};
use pd_server::wire::{self, TurnRequest};

#[tokio::test]
async fn a_replayed_turn_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pd_ledger::testkit::Deployed { ledger, admin, .. } =
        deployed(FileStore::open(&dir.path().join("ledger")).unwrap());
    let ledger_id = ledger.state().ledger_id();
    let store = Arc::new(pd_store::FsStore::open(&dir.path().join("objects")).unwrap());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ledger, store, ServeOptions::new(addr), shutdown);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let request = |nonce: Hash| {
        let time_ms = pd_server::now_ms();
        let sig = admin.sign(wire::TURN_DOMAIN, &wire::turn_digest(&ledger_id, "admin", time_ms, &nonce));
        TurnRequest { actor: "admin".into(), time_ms, nonce, sig }
    };
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/turn");
    let take = |req: TurnRequest| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(&url).json(&req).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let first = request(Hash([1; 32]));
    let (status, body) = take(first.clone()).await;
    assert_eq!(status, 200, "{body}");
    let lease: wire::Turn = serde_json::from_str(&body).unwrap();
    http.delete(format!("http://{addr}/v1/turn/{}", lease.lease)).send().await.unwrap();

    let (status, body) = take(first).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already used"), "{body}");
    // A fresh request from the same key is granted.
    let (status, body) = take(request(Hash([2; 32]))).await;
    assert_eq!(status, 200, "{body}");
}
