//! `POST /v1/entries` takes signed statements: each lands once, a replay is refused, a forged
//! one never reaches the writer, and concurrent statements of many keys all land, in order.

use std::sync::Arc;

use pd_ledger::file_store::FileStore;
use pd_ledger::testkit::deployed;
use pd_ledger::{Body, Hash, KeyRevoke, RevokeKind, SecretKey, Statement, Version};
use pd_server::api::{router, ServeOptions};
use pd_server::wire::{HeadInfo, Receipt};

struct Server {
    url: String,
    http: reqwest::Client,
    admin: SecretKey,
    target: SecretKey,
    version: Version,
    package: Hash,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = deployed(FileStore::open(&dir.path().join("ledger")).unwrap());
        let store = Arc::new(pd_store::FsStore::open(&dir.path().join("objects")).unwrap());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(d.ledger, store, ServeOptions::new(addr), shutdown);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            admin: d.admin,
            target: d.target,
            version: d.version,
            package: d.package,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn post(&self, s: &Statement) -> (u16, String) {
        let r = self.http.post(format!("{}/v1/entries", self.url)).body(s.encode()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn head(&self) -> HeadInfo {
        self.http.get(format!("{}/v1/head", self.url)).send().await.unwrap().json().await.unwrap()
    }

    fn ack(&self) -> Body {
        Body::Ack(pd_ledger::Ack {
            env: "dev".into(),
            version: self.version,
            package: self.package,
            outcome: pd_ledger::Outcome::Loaded,
        })
    }
}

fn revoke(name: &str) -> Body {
    Body::KeyRevoke(KeyRevoke { name: name.into(), kind: RevokeKind::Left, reason: "left".into() })
}

#[tokio::test]
async fn a_replayed_statement_is_refused_and_a_fresh_one_lands() {
    let s = Server::start().await;
    let h = s.head().await;
    let now = pd_server::now_ms();
    let statement = Statement::sign(&h.ledger_id, "dev-1", h.len, now, s.ack(), &s.target);
    let (status, body) = s.post(&statement).await;
    assert_eq!(status, 201, "{body}");
    let receipt: Receipt = serde_json::from_str(&body).unwrap();
    assert_eq!(receipt.seq, h.len);
    let (status, body) = s.post(&statement).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("replayed"), "{body}");
    assert_eq!(s.head().await.len, h.len + 1, "nothing was appended for the replay");
    // The same ack signed again (at another time) is a new statement.
    let again = Statement::sign(&h.ledger_id, "dev-1", h.len, now + 1, s.ack(), &s.target);
    let (status, body) = s.post(&again).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_forged_or_foreign_statement_is_refused_before_it_is_queued() {
    let s = Server::start().await;
    let h = s.head().await;
    let now = pd_server::now_ms();
    let mallory = SecretKey::from_seed([66; 32]);
    let forged = Statement::sign(&h.ledger_id, "admin", h.len, now, revoke("carol"), &mallory);
    let (status, body) = s.post(&forged).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("does not verify"), "{body}");
    let foreign = Statement::sign(&Hash([7; 32]), "admin", h.len, now, revoke("carol"), &s.admin);
    let (status, body) = s.post(&foreign).await;
    assert_eq!(status, 403, "a statement signed for another ledger: {body}");
    let stranger = Statement::sign(&h.ledger_id, "nobody", h.len, now, revoke("carol"), &mallory);
    let (status, body) = s.post(&stranger).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not enrolled"), "{body}");
    let r = s.http.post(format!("{}/v1/entries", s.url)).body(vec![0xa1, 0x00]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(s.head().await.len, h.len, "nothing was appended");
}

#[tokio::test]
async fn concurrent_statements_all_land_once_each_in_one_chain() {
    let s = Arc::new(Server::start().await);
    let h = s.head().await;
    let now = pd_server::now_ms();
    let posts: Vec<_> = (0..40)
        .map(|i| {
            let s = s.clone();
            let st = Statement::sign(&h.ledger_id, "dev-1", h.len, now + i, s.ack(), &s.target);
            tokio::spawn(async move { s.post(&st).await })
        })
        .collect();
    let (mut seqs, mut busy) = (Vec::new(), 0);
    for p in posts {
        match p.await.unwrap() {
            (201, body) => seqs.push(serde_json::from_str::<Receipt>(&body).unwrap().seq),
            // One key may have only a few statements waiting: the rest are told to retry.
            (429, body) => {
                assert!(body.contains("waiting"), "{body}");
                busy += 1
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    seqs.sort();
    seqs.dedup();
    assert!(!seqs.is_empty());
    assert_eq!(seqs.len() + busy, 40, "every statement landed once or was told to retry");
    assert_eq!(s.head().await.len, h.len + seqs.len() as u64);
    // The whole ledger replays under the rule, signatures included.
    let r = s.http.get(format!("{}/v1/entries", s.url)).send().await.unwrap();
    let page: pd_server::wire::EntryBytes = ciborium::from_reader(r.bytes().await.unwrap().as_ref()).unwrap();
    let state = pd_ledger::replay(page.iter().map(|b| b.as_slice()), pd_ledger::Signatures::Verify).unwrap();
    assert_eq!(state.len(), h.len + seqs.len() as u64);
}
