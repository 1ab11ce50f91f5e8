//! `pd demo`: the seed chapter's story on a throwaway home, step by step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `pd demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's home and files in this new directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory (its path is printed at the end), to look around or rerun
    /// a step.
    #[arg(long, conflicts_with = "dir")]
    keep: bool,
}

const BASELINE: &str = "\
# llm_policy.yaml — which models each role may use
models:
  claude:
    allowed_roles: [nsf_research_staff]
    daily_budget_usd: 50
";

const WITH_OPENAI: &str = "\
  openai:
    allowed_roles: [nsf_research_staff]
    daily_budget_usd: 50
";

/// Runs the story. Every step is a real `pd` command on the demo's home. With `--json` the
/// story goes to stderr and stdout gets the result (`schemas/demo.json`).
pub fn run(ctx: &crate::Ctx, a: DemoArgs) -> Result<()> {
    let story_on_stderr = ctx.json.then(crate::output::story_on_stderr);
    let told = tell(a, ctx.json);
    drop(story_on_stderr);
    let (dir, kept, report) = told?;
    if ctx.json {
        let mut result = pd_verify::report_json(&report);
        result["dir"] = serde_json::json!(dir);
        result["kept"] = serde_json::json!(kept);
        return ctx.emit(&result);
    }
    Ok(())
}

/// The story: where it ran, whether its files are kept, and pd-verify's report on its export.
fn tell(a: DemoArgs, json: bool) -> Result<(PathBuf, bool, pd_verify::Report)> {
    let mut tmp = None;
    let keep = a.dir.is_some() || a.keep;
    let dir = match a.dir {
        Some(d) => {
            std::fs::create_dir(&d)
                .with_context(|| format!("creating {} (it must not exist yet)", d.display()))?;
            d
        }
        None => {
            let t = tempfile::Builder::new().prefix("pd-demo-").tempdir()?;
            let path = t.path().to_path_buf();
            // Removed at the end unless kept: its paths are printed along the way.
            if a.keep {
                let _ = t.keep();
            } else {
                tmp = Some(t);
            }
            path
        }
    };
    // Every command runs there, so what it prints (paths included) is what you would see.
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    std::env::set_current_dir(&dir).with_context(|| format!("entering {}", dir.display()))?;
    outln!("# the demo works in {} (as if you had run `cd` there)", dir.display());
    let home = dir.join(".pd");
    let policy = dir.join("governance").join("llm_policy.yaml");
    std::fs::create_dir_all(policy.parent().unwrap_or(&dir))?;
    std::fs::write(&policy, BASELINE)?;
    let mut step = Step { home: &home, policy: &policy, server: None };
    setup(&step)?;
    let cluster = Cluster::start(&home, &dir)?;
    outln!(
        "\n# pd serve runs at {}; each target runs `pd agent` beside an example target \
         ({} of them; prod-3 cannot load PD-23.1.0)",
        cluster.url,
        TARGETS.len()
    );
    step.server = Some(cluster.url.clone());
    let told = story(&step);
    let export = dir.join("audit.pdx");
    let exported = told.and_then(|()| step.pd("", "ledger export audit.pdx --with-artifacts"));
    cluster.stop()?;
    exported?;
    outln!("\n$ pd-verify audit.pdx");
    let report = pd_verify::verify_file(&export, None).context("pd-verify on the demo's export")?;
    // With --json the report is the result, on stdout.
    if !json {
        pd_verify::print_report(&report);
    }
    if keep {
        outln!("\ndemo files kept in {}: `cd` there and run pd (the home is .pd)", dir.display());
    } else {
        outln!("\n{} is removed now; `pd demo --keep` keeps it", dir.display());
    }
    drop(tmp);
    Ok((dir, keep, report))
}

struct Step<'a> {
    home: &'a Path,
    policy: &'a Path,
    /// Once the in-process server runs, every step goes through it.
    server: Option<String>,
}

impl Step<'_> {
    /// Runs `pd --home H [--as ACTOR] ARGS` and echoes it as a user would type it.
    fn pd(&self, actor: &str, args: &str) -> Result<()> {
        self.run(actor, args, Expect::Success)
    }

    /// The same, for a step the ledger must refuse.
    fn refused(&self, actor: &str, args: &str) -> Result<()> {
        self.run(actor, args, Expect::Refusal)
    }

    fn run(&self, actor: &str, args: &str, expect: Expect) -> Result<()> {
        let shown = args.replace(&self.policy.display().to_string(), "governance/llm_policy.yaml");
        let shown = shown.replace(&format!("{}/", self.home.parent().unwrap_or(self.home).display()), "");
        let server = self.server.as_ref().map(|u| format!("--server {u} ")).unwrap_or_default();
        let who = if actor.is_empty() { String::new() } else { format!("--as {actor} ") };
        outln!("\n$ pd {server}{who}{shown}");
        let mut argv = vec!["pd".to_string(), "--home".into(), self.home.display().to_string()];
        if let Some(url) = &self.server {
            argv.extend(["--server".to_string(), url.clone()]);
        }
        if !actor.is_empty() {
            argv.extend(["--as".to_string(), actor.to_string()]);
        }
        argv.extend(split(args));
        match (crate::run(argv), expect) {
            (Ok(()), Expect::Success) => Ok(()),
            (Err(e), Expect::Refusal) => {
                outln!("✘ refused: {}", crate::output::chain(&e));
                Ok(())
            }
            (Ok(()), Expect::Refusal) => {
                anyhow::bail!("demo step `pd {shown}` should have been refused")
            }
            (Err(e), Expect::Success) => Err(e.context(format!("demo step `pd {shown}`"))),
        }
    }
}

#[derive(Clone, Copy)]
enum Expect {
    Success,
    Refusal,
}

/// Splits on spaces, keeping "quoted text" together.
fn split(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in args.split('"').enumerate() {
        if i % 2 == 1 {
            out.push(part.to_string());
        } else {
            out.extend(part.split_whitespace().map(String::from));
        }
    }
    out
}

/// Target keys and their environments: three per environment.
const TARGETS: [(&str, &str); 9] = [
    ("dev-1", "dev"),
    ("dev-2", "dev"),
    ("dev-3", "dev"),
    ("staging-1", "staging"),
    ("staging-2", "staging"),
    ("staging-3", "staging"),
    ("prod-1", "prod"),
    ("prod-2", "prod"),
    ("prod-3", "prod"),
];

/// The version the failing target cannot load.
const BROKEN_ON_PROD_3: &str = "PD-23.1.0";

/// Before the server starts: the home, its keys and the approved baseline.
fn setup(s: &Step) -> Result<()> {
    let p = s.policy.display().to_string();
    s.pd("", "init")?;
    outln!(
        "\n# One machine plays everyone, so the admin makes carol's and the targets' keys here \
         (--generate-here): the ledger records them in admin custody and pd-verify reports their \
         approvals and acks as not independent. For real, each holder runs `pd key gen NAME` and \
         the admin enrols the request with `pd key new NAME --role … --request NAME.request`."
    );
    s.pd("", "key new carol --role approver --generate-here")?;
    for (t, env) in TARGETS {
        s.pd("", &format!("key new {t} --role target --env {env} --generate-here"))?;
    }
    s.pd("", &format!("ledger package {p} --version 23.0.0 --reason \"Baseline: Claude for NSF staff\""))?;
    s.pd("carol", "ledger approve PD-23.0.0 --reason \"Reviewed in HITL\"")
}

/// The seed's story, over the network.
fn story(s: &Step) -> Result<()> {
    let p = s.policy.display().to_string();
    s.pd("", &format!("ledger deploy {p} --reason \"Baseline rollout\""))?;

    outln!("\n# Governance adds an openai block to llm_policy.yaml");
    let mut text = std::fs::read_to_string(s.policy)?;
    text.push_str(WITH_OPENAI);
    std::fs::write(s.policy, text)?;
    let reason = "Enable OpenAI GPT for nsf_research_staff";
    // The deploy packages the changed file as PD-23.1.0, then stops: nobody approved it yet.
    s.refused("", &format!("ledger deploy {p} --reason \"{reason}\""))?;
    s.refused("", "ledger approve PD-23.1.0 --reason \"I wrote it, ship it\"")?;
    s.pd("carol", "ledger approve PD-23.1.0 --reason \"Approved in HITL by Carol\"")?;
    s.refused("", "ledger deploy PD-23.1.0 --env prod --reason \"skip ahead\" --no-wait")?;

    outln!("\n# prod-3 cannot load it: the deploy rolls prod back by itself");
    s.refused("", &format!("ledger deploy {p} --reason \"{reason}\" --auto-rollback --timeout 60s"))?;
    s.pd("", "state prod")?;

    outln!("\n# Staging should match prod until prod-3 is fixed: one command");
    s.pd("", "ledger rollback staging --reason \"Match prod while prod-3 is fixed\" --timeout 60s")?;
    s.pd("", "state")?;
    s.pd("", "ledger log")
}

/// The in-process server, agents and example targets of the demo.
struct Cluster {
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Cluster {
    /// Starts everything on loopback and returns once every agent follows the server.
    fn start(home: &Path, dir: &Path) -> Result<Cluster> {
        let h = crate::home::Home::open(home)?;
        let (ledger, store) = (h.ledger()?, h.store()?);
        let opts = crate::net::serve_options(&h, &ledger, h.config.actor.clone(), "127.0.0.1:0".parse()?);
        let mut agents = Vec::new();
        for (name, env) in TARGETS {
            agents.push((
                name.to_string(),
                env.to_string(),
                h.secret_key(name)?,
                dir.join("agents").join(name),
            ));
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let url = format!("http://{}", listener.local_addr()?);
                let mut opts = opts;
                opts.listen = listener.local_addr()?;
                let server =
                    tokio::spawn(pd_server::api::serve_on(listener, ledger, store, opts, stop_rx.clone()));
                let client = pd_server::Client::new(&url, None)?;
                let mut tasks = Vec::new();
                for (name, env, key, agent_dir) in agents {
                    let refuse: Vec<pd_ledger::Version> =
                        if name == "prod-3" { vec![BROKEN_ON_PROD_3.parse()?] } else { Vec::new() };
                    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
                    tasks.push(tokio::spawn(pd_server::target::run(
                        "127.0.0.1:0".parse()?,
                        agent_dir.join("current"),
                        refuse,
                        Vec::new(),
                        move |addr| {
                            let _ = addr_tx.send(addr);
                        },
                        stop_rx.clone(),
                    )));
                    let reload = pd_server::agent::Reload::Url(format!("http://{}/reload", addr_rx.await?));
                    let cfg = pd_server::agent::AgentConfig {
                        client: client.clone(),
                        env,
                        actor: name,
                        key,
                        dir: agent_dir,
                        reload,
                        objects: pd_server::agent::Objects::Server,
                        heartbeat: std::time::Duration::from_secs(10),
                        health_url: None,
                        clock: pd_server::system_clock(),
                        random: pd_server::system_random(),
                    };
                    // Light agents, as a large fleet would run them.
                    let replica =
                        pd_server::agent::Replica::<pd_ledger::storage::MemStore>::Light(Box::default());
                    tasks
                        .push(tokio::spawn(pd_server::agent::Agent::new(cfg, replica)?.run(stop_rx.clone())));
                }
                let _ = ready_tx.send(url);
                for t in tasks {
                    t.await??;
                }
                server.await?
            })
        });
        match ready_rx.recv() {
            Ok(url) => Ok(Cluster { url, stop, thread }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e.context("starting the demo's server and agents")),
                _ => anyhow::bail!("the demo's server thread stopped"),
            },
        }
    }

    /// Stops the server, agents and targets and waits for them.
    fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the demo's server thread panicked"),
        }
    }
}
