//! Load for `bench/abuse.sh`: many event-stream followers, many concurrent large uploads,
//! or many slowloris connections against one `pd serve`, over raw TCP so the load itself
//! costs little memory.
//!
//! ```text
//! abuse followers URL N SECONDS            hold N open /v1/events streams for SECONDS
//! abuse uploads URL HOME ACTOR N MIB       N concurrent signed uploads of MIB MiB each
//! abuse slowloris URL N SECONDS            N connections dribbling a header byte at a time,
//!                                          meanwhile GET /healthz in a loop; prints p50/p99
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().context("missing argument; see the example's doc comment");
    match arg(0)?.as_str() {
        "followers" => followers(&arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?).await,
        "uploads" => uploads(&arg(1)?, &arg(2)?, &arg(3)?, arg(4)?.parse()?, arg(5)?.parse()?).await,
        "slowloris" => slowloris(&arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?).await,
        other => bail!("unknown load {other:?}"),
    }
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

async fn followers(url: &str, n: usize, secs: u64) -> Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr(url)).await?;
        s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await?;
        held.push(s);
    }
    // Each answered: its response head arrived.
    for s in &mut held {
        let mut buf = [0u8; 512];
        if s.read(&mut buf).await? == 0 {
            bail!("a follower's stream was closed");
        }
    }
    println!("{n} followers connected");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(())
}

/// A MiB of bytes that differ per upload, so every upload is a new object.
fn block(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..MIB / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

async fn uploads(url: &str, home: &str, actor: &str, n: u64, mib: usize) -> Result<()> {
    let hex = std::fs::read_to_string(format!("{home}/keys/{actor}.ed25519"))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut seed)?;
    let key = pd_ledger::SecretKey::from_seed(seed);
    let ledger_id = pd_server::Client::new(url, None)?.head().await?.ledger_id;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (url, actor, key) =
            (url.to_string(), actor.to_string(), pd_ledger::SecretKey::from_seed(key.seed()));
        tasks.push(tokio::spawn(async move {
            let block = block(i + 1);
            let mut h = blake3::Hasher::new();
            for _ in 0..mib {
                h.update(&block);
            }
            let hash = pd_ledger::Hash(*h.finalize().as_bytes());
            let sig = key.sign(pd_server::wire::PUT_DOMAIN, &pd_server::wire::put_digest(&ledger_id, &hash));
            let mut s = TcpStream::connect(addr(&url)).await?;
            let head = format!(
                "PUT /v1/objects/{} HTTP/1.1\r\nHost: x\r\npd-actor: {actor}\r\npd-signature: {}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                hash.to_hex(),
                sig.to_hex(),
                mib * MIB
            );
            s.write_all(head.as_bytes()).await?;
            for _ in 0..mib {
                s.write_all(&block).await?;
            }
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await?;
            let status = String::from_utf8_lossy(&answer[..answer.len().min(12)]).to_string();
            anyhow::ensure!(status.ends_with("201"), "upload {i}: {}", String::from_utf8_lossy(&answer));
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} uploads of {mib} MiB in {secs:.1} s ({:.0} MB/s)",
        (n as f64 * (mib * MIB) as f64) / secs / 1e6
    );
    Ok(())
}

async fn slowloris(url: &str, n: usize, secs: u64) -> Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let a = addr(url);
        tasks.push(tokio::spawn(async move {
            // Reconnect whenever the server closes us, as an attacker would.
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let Ok(mut s) = TcpStream::connect(&a).await else { continue };
                if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.is_err() {
                    continue;
                }
                while Instant::now() < end && s.write_all(b"X").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let t = Instant::now();
        let ok = client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success());
        if !ok {
            bail!("/healthz failed during the slowloris load");
        }
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "/healthz during {n} slowloris connections: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}
