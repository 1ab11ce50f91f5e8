//! pd against a real S3 server: a three-node Garage cluster on loopback (replication
//! factor 3), one per test. Artifacts in the bucket, agents fetching from it, the ledger
//! mirrored, restored and verified, and a node killed mid-deploy.

use pd_e2e::garage::Garage;
use pd_e2e::{Net, World};

/// A standard world whose every pd process reaches `g` and, with `store`, keeps its
/// artifacts at `s3://pd-test/<store>`.
fn world(g: &Garage, store: Option<&str>) -> World {
    let mut w = World::new();
    w.env = g.env();
    if let Some(prefix) = store {
        w.env.push(("PD_STORE".into(), format!("s3://pd-test/{prefix}")));
    }
    w.ok("", &["init"]);
    w.ok("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
    for env in ["dev", "staging", "prod"] {
        w.ok("", &["key", "new", &format!("{env}-1"), "--role", "target", "--env", env, "--generate-here"]);
    }
    w
}

/// Packages `text` as llm_policy.yaml and approves it, through `server` if given.
fn package(w: &World, server: Option<&str>, text: &str) -> String {
    w.write("llm_policy.yaml", text);
    let run = |actor: &str, args: &[&str]| {
        let mut full: Vec<&str> = server.map_or(vec![], |url| vec!["--server", url]);
        full.extend_from_slice(args);
        w.ok(actor, &full)
    };
    let out: serde_json::Value =
        serde_json::from_str(&run("", &["ledger", "package", "llm_policy.yaml", "--reason", "r", "--json"]))
            .expect("package JSON");
    let version = out["version"].as_str().expect("version").to_string();
    run("carol", &["ledger", "approve", &version, "--reason", "ok"]);
    version
}

fn blake3_of(w: &World, version: &str) -> String {
    let show: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "show", version, "--json"])).expect("show JSON");
    show["body"]["package"]["tarball"]["blake3"].as_str().expect("blake3").to_string()
}

/// `n` bytes that do not compress (xorshift), so the tarball is as large as its files.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn a_100_mib_package_round_trips_through_the_bucket_and_nothing_lands_on_disk() {
    let g = Garage::start();
    let w = world(&g, Some("rt"));
    std::fs::create_dir_all(w.path("big")).expect("mkdir");
    for (i, name) in ["a.bin", "b.bin"].iter().enumerate() {
        std::fs::write(w.path("big").join(name), noise(50 << 20, i as u64 + 7)).expect("write");
    }
    let out = w.ok("", &["ledger", "package", "big", "--reason", "large", "--json"]);
    let pkg: serde_json::Value = serde_json::from_str(&out).expect("package JSON");
    let size = pkg["tarball"]["size"].as_u64().expect("size");
    assert!(size > 100 << 20, "a tarball of over 100 MiB (multipart upload): {size}");
    let hash = pkg["tarball"]["blake3"].as_str().expect("blake3");
    assert!(!w.home.join("objects").exists(), "the artifact went to the bucket, not the home");

    let back = w.path("back.tgz");
    w.ok("", &["store", "get", hash, "-o", back.to_str().expect("path")]);
    assert_eq!(std::fs::metadata(&back).expect("downloaded").len(), size);
    // A fresh home on another store reads the same bytes straight from the bucket.
    let mut other = World::new();
    other.env = w.env.clone();
    other.ok("", &["init"]);
    let again = other.path("again.tgz");
    other.ok("", &["store", "get", hash, "-o", again.to_str().expect("path")]);
    assert_eq!(std::fs::read(&back).expect("read"), std::fs::read(&again).expect("read"));
    // Mirroring to the store's own prefix finds the artifact already there.
    let mirrored: serde_json::Value =
        serde_json::from_str(&w.ok("", &["ledger", "mirror", "s3://pd-test/rt", "--json"]))
            .expect("mirror JSON");
    assert_eq!(mirrored["pushed"]["artifacts"], 0, "{mirrored}");
}

#[test]
fn a_corrupted_object_in_the_bucket_is_detected_on_read() {
    let g = Garage::start();
    let w = world(&g, Some("corrupt"));
    let version = package(&w, None, "max_tokens: 1000\n");
    let hash = blake3_of(&w, &version);
    g.overwrite(&format!("corrupt/objects/{hash}"), b"not the policy you signed");
    let out = w
        .pd("", &["store", "get", &hash, "-o", w.path("x").to_str().expect("path")])
        .output()
        .expect("run pd");
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("corrupt") && text.contains(&hash), "{text}");
    assert!(!w.path("x").exists(), "nothing written from a corrupt object");
    // The deployer's own check refuses to push it.
    let out =
        w.pd("", &["ledger", "deploy", &version, "--reason", "r", "--no-wait"]).output().expect("run pd");
    assert!(!out.status.success() && pd_e2e::text(&out).contains("corrupt"), "{}", pd_e2e::text(&out));
}

#[test]
fn agents_fetch_artifacts_from_the_bucket_and_the_server_serves_none() {
    let g = Garage::start();
    let w = world(&g, Some("fleet"));
    let version = package(&w, None, "max_tokens: 1000\n");
    let mut net = Net::start(&w);
    for (t, env) in [("dev-1", "dev"), ("staging-1", "staging"), ("prod-1", "prod")] {
        net.agent_with(t, env, &[], &["--objects", "s3://pd-test/fleet"]);
    }
    let out = net.ok("", &["ledger", "deploy", &version, "--reason", "roll out", "--timeout", "60s"]);
    assert!(out.contains("✔ all targets acknowledged"), "{out}");
    for t in ["dev-1", "staging-1", "prod-1"] {
        assert_eq!(net.loaded(t)["version"], version.as_str());
    }
    let (_, metrics) = pd_e2e::http(net.url(), "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    // One fetch: the deployer's own check before its push. Agents used the bucket.
    assert!(metrics.lines().any(|l| l == "pd_objects_served_total 1"), "{metrics}");
}

#[test]
fn a_mirror_restores_into_a_new_home_and_any_tampering_fails_verification() {
    let g = Garage::start();
    let w = world(&g, None);
    let v1 = package(&w, None, "max_tokens: 1000\n");
    w.ok("", &["ledger", "deploy", &v1, "--until", "dev", "--reason", "r", "--no-wait"]);
    let first = w.ok("", &["ledger", "mirror", "s3://pd-test/m"]);
    assert!(first.contains("1 new segment, 1 artifact uploaded"), "{first}");
    let v2 = package(&w, None, "max_tokens: 2000\n");
    let second = w.ok("", &["ledger", "mirror", "s3://pd-test/m"]);
    assert!(second.contains("1 new segment, 1 artifact uploaded"), "{second}");
    let verified = w.ok("", &["ledger", "verify", "s3://pd-test/m"]);
    assert!(verified.contains("every rule hold") && verified.contains("2 artifacts"), "{verified}");

    let mut restored = World::new();
    restored.env = w.env.clone();
    let out = restored.ok("", &["--json", "ledger", "restore", "s3://pd-test/m"]);
    let out: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (out["entries"].as_u64(), out["artifacts"].as_u64()),
        (Some(w.log().len() as u64), Some(2)),
        "{out}"
    );
    assert_eq!(restored.log(), w.log(), "the same ledger, entry for entry");
    for v in [&v1, &v2] {
        let hash = blake3_of(&w, v);
        restored.ok("", &["store", "get", &hash, "-o", restored.path(v).to_str().expect("path")]);
    }
    // Restore never overwrites a home.
    let out = restored.pd("", &["ledger", "restore", "s3://pd-test/m"]).output().expect("run pd");
    assert_eq!(out.status.code(), Some(1), "{}", pd_e2e::text(&out));

    // Another ledger may not mirror into this prefix.
    let mut stranger = World::new();
    stranger.env = w.env.clone();
    stranger.ok("", &["init"]);
    let out = stranger.pd("", &["ledger", "mirror", "s3://pd-test/m"]).output().expect("run pd");
    assert!(!out.status.success() && pd_e2e::text(&out).contains("another ledger"), "{}", pd_e2e::text(&out));

    // A segment altered in the bucket (here: emptied) fails verification, naming it.
    let segment = format!("ledger/segments/{:020}-{:020}.cbor", 0, first_segment_end(&first));
    g.overwrite(&format!("m/{segment}"), &[0x80]);
    let out = w.pd("", &["ledger", "verify", "s3://pd-test/m"]).output().expect("run pd");
    let text = pd_e2e::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("does not verify") && text.contains(&segment), "{text}");
}

/// The end of the first segment from `pd ledger mirror`'s "mirrored entries 0..N" line.
fn first_segment_end(out: &str) -> u64 {
    let range = out.split("mirrored entries 0..").nth(1).expect("a mirrored range");
    range.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a number")
}

#[test]
fn a_node_killed_mid_deploy_neither_stops_the_deploy_nor_loses_anything() {
    let mut g = Garage::start();
    let w = world(&g, Some("ha"));
    let v1 = package(&w, None, "max_tokens: 1000\n");
    let mut net = Net::start_with(&w, &["--mirror", "s3://pd-test/ha-mirror", "--mirror-interval", "1h"]);
    net.agent_with("dev-1", "dev", &[], &["--objects", "s3://pd-test/ha"]);
    net.agent_with("staging-1", "staging", &[], &["--objects", "s3://pd-test/ha"]);
    let mut deploy =
        w.pd("", &["--server", net.url(), "ledger", "deploy", &v1, "--reason", "r", "--timeout", "120s"]);
    let mut deploy = deploy.stdout(std::process::Stdio::null()).spawn().expect("deploy");
    // prod's push waits for staging's ack; prod's agent starts only after a node is gone.
    net.wait_for(|net| net.log().iter().any(|e| e["body"]["push"]["env"] == "prod").then_some(()));
    g.kill(2);
    net.agent_with("prod-1", "prod", &[], &["--objects", "s3://pd-test/ha"]);
    assert!(deploy.wait().expect("deploy exits").success(), "the deploy completed with a node down");
    assert_eq!(net.loaded("prod-1")["version"], v1.as_str());
    // Writes keep working on the two nodes left: a new package, deployed everywhere.
    let v2 = package(&w, Some(net.url()), "max_tokens: 2000\n");
    net.ok("", &["ledger", "deploy", &v2, "--reason", "r", "--timeout", "60s"]);
    let len = net.log().len();
    // A graceful stop mirrors the last entries; the mirror verifies with every artifact.
    assert!(net.server.terminate(), "the server stopped cleanly");
    let verified = w.ok("", &["ledger", "verify", "s3://pd-test/ha-mirror", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&verified).expect("verify JSON");
    assert_eq!(report["entries"], len as u64, "{report}");
    for v in [&v1, &v2] {
        let hash = blake3_of(&w, v);
        w.ok("", &["store", "get", &hash, "-o", w.path(v).to_str().expect("path")]);
    }
}

#[test]
fn an_unreachable_store_refuses_the_package_and_records_nothing() {
    let mut w = World::new();
    w.ok("", &["init"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    w.env = vec![
        ("PD_STORE".into(), "s3://pd-test/down".into()),
        ("AWS_ENDPOINT_URL".into(), format!("http://{dead}")),
        ("AWS_REGION".into(), "garage".into()),
        ("AWS_ACCESS_KEY_ID".into(), "GK00".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "00".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    w.write("llm_policy.yaml", "max_tokens: 1000\n");
    let err = w.refused_with(2, "", &["ledger", "package", "llm_policy.yaml", "--reason", "r"]);
    assert!(err.contains("s3://pd-test/down") && err.contains("unreachable"), "{err}");
    assert_eq!(w.log().len(), 1, "no package entry without its artifact stored");
}

/// Regression: `/v1/export` called the S3 store on an async thread, which panicked ("Cannot
/// start a runtime from within a runtime") and dropped the connection.
#[test]
fn the_server_exports_with_an_s3_store() {
    let g = Garage::start();
    let w = world(&g, Some("export"));
    package(&w, None, "max_tokens: 1000\n");
    let net = Net::start(&w);
    let (status, bytes) = pd_e2e::http(net.url(), "GET", "/v1/export", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    std::fs::write(w.path("served.pdx"), bytes).expect("write");
    let out = w.verify(&[w.path("served.pdx").to_str().expect("path")]);
    assert!(out.status.success(), "{}", pd_e2e::text(&out));
}
