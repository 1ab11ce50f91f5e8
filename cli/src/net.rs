//! `pd serve`, `pd agent` and `pd example-target`: the long-running processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use pd_ledger::file_store::FileStore;
use pd_ledger::{Ledger, Role, Version};
use pd_server::agent::{Agent, AgentConfig, Objects, Reload, Replica};
use pd_server::{Client, ServeOptions};
use tokio::sync::watch;

use crate::Ctx;

/// Arguments of `pd serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every request but /healthz.
    #[arg(long, env = "PD_SERVE_TOKEN", hide_env_values = true)]
    require_token: Option<String>,
    /// Write a checkpoint after this many entries (and after every push, rollback and retry, so
    /// agents can adopt at once); 0 turns automatic checkpoints off. They are signed by the
    /// acting key (`--as`), which needs the log role.
    #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
    checkpoint_every: u64,
    /// …and at least this often while entries keep coming.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    checkpoint_interval: Duration,
    /// Mirror the ledger and its artifacts to this S3 location while serving (immutable
    /// segments plus a signed head; see `pd ledger mirror`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    mirror: Option<String>,
    /// How often to mirror.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    mirror_interval: Duration,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); clients trust its CA
    /// through the system's roots or `--ca FILE`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require every client (agents, deployers, auditors) to present a certificate signed by
    /// the CA in this PEM file (mutual TLS; clients pass `--client-cert FILE`). /healthz too.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// POST a JSON event here on every push, rollback, failed ack, adoption and stale target
    /// (repeatable). It has a Slack-style `text` field, so a chat incoming webhook URL works
    /// as is; delivery is retried with backoff and never delays a deploy.
    #[arg(long, value_name = "URL", value_parser = notify_url)]
    notify: Vec<String>,
    /// Most connections open at once; one more gets `503 Service Unavailable` and is closed
    /// (default: 4096, or the open-file limit minus 256 if that is lower).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Close a connection that takes longer than this to send a request's headers, or that
    /// sends no next request for this long (idle and slowloris connections).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    header_read_timeout: Duration,
}

/// Arguments of `pd agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// The environment this target belongs to (default: the one its key is enrolled in;
    /// if given, it must match).
    #[arg(long)]
    env: Option<String>,
    /// Directory for versions, the `current` symlink and the agent's state.
    #[arg(long)]
    dir: PathBuf,
    /// Reload webhook: the agent POSTs `URL?ver=PD-x.y.z`; non-2xx is a failed load.
    #[arg(long, conflicts_with = "reload_cmd")]
    reload_url: Option<String>,
    /// Reload command (run by `sh -c` with PD_VERSION and PD_POLICY_DIR); non-zero is a failed load.
    #[arg(long)]
    reload_cmd: Option<String>,
    /// Fetch artifacts from here instead of the server: `s3://bucket/prefix` (AWS settings
    /// from the environment) or an `https://` base serving `<base>/<blake3 hex>`. The agent
    /// still checks every hash and the OpenPGP signature itself.
    #[arg(long, value_name = "URL")]
    objects: Option<String>,
    /// How often to send the server a signed heartbeat (what runs here); `pd state` shows a
    /// target as stale after three intervals without one.
    #[arg(long, default_value = "10s", value_parser = heartbeat_interval)]
    pub heartbeat: std::time::Duration,
    /// Verify only what decides what this target runs: the control entries (keys, packages,
    /// approvals, pushes, rollbacks) and the newest checkpoint, which the log signs over them.
    /// Work per deploy stays the same however many targets the fleet has; acks of other
    /// targets are taken on the log's signed word instead of checked here. Without it the
    /// agent keeps and checks a full replica in DIR/ledger.
    #[arg(long)]
    light: bool,
    /// Serve `GET /healthz` here for a supervisor: 200 while the agent follows the server and
    /// the target runs every followed set's desired version, 503 otherwise (port 0 picks a
    /// free port; the chosen address is printed).
    #[arg(long, value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// The service's own health URL (`http://127.0.0.1:8080/healthz`): each heartbeat says
    /// whether it answered with a 2xx, which the `health` rollout gate of `pd env set
    /// --gate health` requires of every target of a wave during its bake.
    #[arg(long, value_name = "URL")]
    health_url: Option<String>,
}

/// Shortest and longest `--heartbeat` interval.
fn heartbeat_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    let range = pd_ledger::heartbeat::INTERVAL_MS;
    if range.contains(&(d.as_millis() as u64)) {
        Ok(d)
    } else {
        Err(format!("{s:?}: give an interval from {} ms to {} ms", range.start(), range.end()))
    }
}

/// Arguments of `pd example-target`.
#[derive(Args)]
pub struct TargetArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The policy directory to load on reload (an agent's DIR/current).
    #[arg(long)]
    policy_dir: PathBuf,
    /// Fail to load this version (repeatable): shows a failing target in tests and demos.
    #[arg(long = "refuse", value_name = "VERSION")]
    refuse: Vec<Version>,
    /// Load this version but fail half of the simulated requests from then on (repeatable):
    /// shows an error spike for rollout gates in tests and demos.
    #[arg(long = "bad", value_name = "VERSION")]
    bad: Vec<Version>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); with `--json`, one JSON object
/// per line.
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match json {
        true => logs.json().try_init(),
        false => logs.with_ansi(crate::output::colour(&std::io::stderr())).try_init(),
    };
}

/// A line on stdout saying what a long-running command does now: `text`, or with `--json`
/// the event as one JSON object (`schemas/events.json`).
fn say(json: bool, text: String, event: serde_json::Value) {
    match json {
        true => {
            crate::output::set_json_lines();
            outln!("{event}")
        }
        false => outln!("{text}"),
    }
}

/// A watch that turns true on SIGTERM or Ctrl-C.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        let _ = tx.send(true);
    });
    rx
}

/// Runs `pd serve` until SIGTERM or Ctrl-C.
pub fn serve(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    init_tracing(ctx.json);
    let home = ctx.home()?;
    let ledger = home.ledger()?;
    let store = home.store()?;
    let mut opts = serve_options(&home, &ledger, ctx.actor(&home), a.listen);
    opts.token = a.require_token;
    // Zero already when the key cannot sign checkpoints (serve_options said so).
    if opts.checkpoint_every > 0 {
        opts.checkpoint_every = a.checkpoint_every;
    }
    opts.checkpoint_interval = a.checkpoint_interval;
    if let Some(n) = a.max_connections {
        opts.max_connections = n as usize;
    }
    anyhow::ensure!(!a.header_read_timeout.is_zero(), "--header-read-timeout must be more than 0");
    opts.header_read_timeout = a.header_read_timeout;
    if let Some(url) = &a.mirror {
        anyhow::ensure!(
            opts.head_signer.is_some(),
            "--mirror needs the acting key's secret to sign the mirror's head"
        );
        opts.mirror = Some((std::sync::Arc::new(pd_server::s3::S3Store::open(url)?), a.mirror_interval));
    }
    opts.notify = a.notify;
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let client_ca = a.client_ca.as_ref().map(read).transpose()?;
        let config = pd_server::tls::server_config(&read(cert)?, &read(key)?, client_ca.as_deref())
            .with_context(|| format!("TLS with {} and {}", cert.display(), key.display()))?;
        opts.tls = Some(config);
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    // Local commands on this home find the server here (see `Home::served_by`).
    let served_by = home.dir.join(crate::home::SERVED_BY);
    let json = ctx.json;
    let served = runtime()?.block_on(pd_server::serve(ledger, store, opts, |addr| {
        let local = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        if let Err(e) = crate::home::write_file_atomic(&served_by, format!("{scheme}://{local}\n").as_bytes())
        {
            tracing::warn!("cannot write {}: {e:#}", served_by.display());
        }
        let url = format!("{scheme}://{addr}");
        say(
            json,
            format!("pd serve listening on {url}"),
            serde_json::json!({ "event": "listening", "url": url }),
        );
    }));
    let _ = std::fs::remove_file(&served_by);
    served
}

/// `--notify`: an http(s) URL.
fn notify_url(text: &str) -> Result<String, String> {
    let host = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
    match host {
        Some(h) if !h.is_empty() && !h.starts_with('/') => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
}

/// Options for serving `home` as `actor`, whose key signs export heads and checkpoints.
pub fn serve_options(
    home: &crate::home::Home,
    ledger: &Ledger<FileStore>,
    actor: String,
    listen: SocketAddr,
) -> ServeOptions {
    let mut opts = ServeOptions::new(listen);
    opts.head_signer = home.secret_key(&actor).ok().map(|k| (actor, k));
    if !can_log(ledger, &opts) {
        opts.checkpoint_every = 0;
    }
    opts
}

/// Whether the serving key may sign checkpoints; says what to do when it may not.
fn can_log(ledger: &Ledger<FileStore>, opts: &ServeOptions) -> bool {
    let actor = opts.head_signer.as_ref().map(|(a, _)| a.as_str());
    let ok =
        actor.and_then(|a| ledger.state().active_key(a)).is_some_and(|k| k.decl.roles.contains(&Role::Log));
    if !ok {
        tracing::warn!(
            "{} cannot sign checkpoints (it needs the log role): agents adopt only what a checkpoint covers; \
             serve --as a key with the log role",
            actor.unwrap_or("this home has no key that")
        );
    }
    ok
}

/// Runs `pd agent` until SIGTERM or Ctrl-C.
pub fn agent(ctx: &Ctx, a: AgentArgs) -> Result<()> {
    init_tracing(ctx.json);
    let Some(url) = ctx.server.clone() else {
        anyhow::bail!("pd agent needs --server URL (or PD_SERVER)");
    };
    // The key: --key FILE (the target's own), else --as NAME's key in the home.
    let key = match &ctx.key_file {
        Some(path) => crate::home::read_key_file(path)?,
        None => {
            let home = ctx
                .home()
                .context("pd agent needs --key FILE (the target's secret key) or a --home holding it")?;
            home.secret_key(&ctx.actor(&home))?
        }
    };
    let reload = match (a.reload_url, a.reload_cmd) {
        (Some(u), _) => Reload::Url(u),
        (None, Some(c)) => Reload::Command(c),
        (None, None) => Reload::None,
    };
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let client = Client::new(&url, ctx.token.clone())?;
    let rt = runtime()?;
    // Who this agent is comes from the ledger's enrolment of its key, never from a flag.
    let replica = if a.light {
        let mut follower = pd_ledger::partial::Follower::new();
        rt.block_on(client.catch_up(&mut follower, &key.public(), None)).with_context(|| {
            format!("reading the ledger's control entries from {url} to learn who this key is")
        })?;
        if follower.checkpoint().is_none() {
            crate::refuse!(
                "pd agent --light: {url} has signed no checkpoint yet, and a light agent verifies \
                 everything against one; start pd serve with a key that has the log role \
                 (pd serve --as NAME), or run the agent without --light"
            );
        }
        Replica::Light(Box::new(follower))
    } else {
        let mut replica = Ledger::open(FileStore::open(&a.dir.join("ledger"))?)
            .with_context(|| format!("opening the agent's ledger replica in {}", a.dir.display()))?;
        // A restart while the server is away identifies from the replica kept from before.
        if let Err(e) = rt.block_on(client.sync(&mut replica, None)) {
            if replica.state().active_key_by_public(&key.public()).is_none() {
                return Err(anyhow::Error::new(e)
                    .context(format!("reading the ledger from {url} to learn who this key is")));
            }
            tracing::warn!("{url} is unreachable ({e}); starting from the replica in the agent's directory");
        }
        Replica::Full(Box::new(replica))
    };
    let found = pd_ledger::identify_decl(
        replica.key(&key.public()),
        &key.public(),
        ctx.actor.as_deref(),
        a.env.as_deref(),
    )
    .map_err(|e| crate::Refused(format!("pd agent: {e}")))?;
    let actor = found.name.clone();
    let Some(env) = found.env.clone() else {
        crate::refuse!("pd agent: {actor} is not a target key (it has no environment); enrol one with --role target --env ENV");
    };
    let objects = a.objects.as_deref().map_or(Ok(Objects::Server), Objects::parse)?;
    let heartbeat = a.heartbeat;
    let cfg = AgentConfig {
        client,
        env: env.clone(),
        actor: actor.clone(),
        key,
        dir: a.dir,
        reload,
        objects,
        heartbeat,
        health_url: a.health_url,
        clock: pd_server::system_clock(),
        random: pd_server::system_random(),
    };
    let agent = Agent::new(cfg, replica)?;
    let mode = if a.light { "light: control entries and checkpoints" } else { "full replica" };
    let following = serde_json::json!({ "event": "following", "target": actor, "env": env, "url": url, "light": a.light });
    say(ctx.json, format!("pd agent {actor} following {env} at {url} ({mode})"), following);
    rt.block_on(async move {
        let stop = stop_on_signal();
        if let Some(addr) = a.health_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--health-listen {addr}: cannot listen there"))?;
            let url = format!("http://{}", listener.local_addr()?);
            let health = serde_json::json!({ "event": "health", "url": url });
            say(ctx.json, format!("agent health on {url} (GET /healthz)"), health);
            tokio::spawn(pd_server::agent::serve_health(listener, agent.status(), stop.clone()));
        }
        agent.run(stop).await
    })
}

/// Runs `pd example-target` until SIGTERM or Ctrl-C.
pub fn example_target(ctx: &Ctx, a: TargetArgs) -> Result<()> {
    init_tracing(ctx.json);
    let json = ctx.json;
    runtime()?.block_on(async move {
        pd_server::target::run(
            a.listen,
            a.policy_dir,
            a.refuse,
            a.bad,
            |addr| {
                let url = format!("http://{addr}");
                say(
                    json,
                    format!("example target listening on {url}"),
                    serde_json::json!({ "event": "listening", "url": url }),
                )
            },
            stop_on_signal(),
        )
        .await
    })
}
