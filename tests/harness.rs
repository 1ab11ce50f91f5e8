//! One small harness for end-to-end tests: a temp home and a builder for the real `pd` and
//! `pd-verify` binaries (built by `cargo build --workspace --bins`, as `scripts/test` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "garage.rs"]
pub mod garage;
#[path = "prometheus.rs"]
pub mod prometheus;

/// Path of a workspace binary next to the test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Commands whose name is two words (`pd ledger log`).
const GROUPS: [&str; 5] = ["key", "ledger", "env", "policy", "store"];
/// Every other command.
const COMMANDS: [&str; 8] =
    ["init", "state", "serve", "agent", "example-target", "demo", "completions", "man"];
/// Commands that share one schema.
const SHARED: [(&str, &str); 5] = [
    ("key-rotate", "key-change"),
    ("key-revoke", "key-change"),
    ("key-approve", "key-change"),
    ("policy-schema", "policy-set"),
    ("policy-validator", "policy-set"),
];

/// If `args` ask for `--json`, checks what pd printed against the schema of that command in
/// `cli/schemas/` (or, for a failure, the error schema): the machine interface is what the
/// schemas say. A command without a schema fails here.
pub fn check_json(args: &[&str], out: &Output) {
    if !args.contains(&"--json") {
        return;
    }
    let name = if out.status.success() {
        let at = args.iter().position(|a| GROUPS.contains(a) || COMMANDS.contains(a));
        let Some(at) = at else { panic!("no command in {args:?}") };
        match GROUPS.contains(&args[at]) {
            true => format!("{}-{}", args[at], args.get(at + 1).expect("a subcommand")),
            false => args[at].to_string(),
        }
    } else {
        "error".to_string()
    };
    let name = SHARED.iter().find(|(cmd, _)| *cmd == name).map_or(name.as_str(), |(_, shared)| shared);
    check_schema(name, args, out);
}

/// Checks what a command printed against `cli/schemas/NAME.json`.
pub fn check_schema(name: &str, args: &[&str], out: &Output) {
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pd {args:?} printed no JSON ({e}): {}", text(out)));
    check_value(name, args, &printed);
}

/// Checks one JSON value that `pd ARGS` printed against `cli/schemas/NAME.json`.
pub fn check_value(name: &str, args: &[&str], printed: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/schemas").join(format!("{name}.json"));
    let schema = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("pd {args:?} --json has no schema at {}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&schema).expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> =
        validator.iter_errors(printed).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "pd {args:?} --json does not match {}: {errors:?}", path.display());
}

/// A throwaway pd home plus a scratch directory for policy files.
pub struct World {
    /// Owns the temp directory.
    pub dir: tempfile::TempDir,
    /// The home (`DIR/.pd`).
    pub home: PathBuf,
    /// Extra environment of every pd process (for example an S3 store's settings).
    pub env: Vec<(String, String)>,
}

/// What a refused command left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    log: String,
    files: Vec<(String, u64)>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// A fresh world with no home yet.
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join(".pd");
        World { dir, home, env: Vec::new() }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the scratch directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// `pd --home HOME [--as ACTOR] ARGS…`.
    pub fn pd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("pd"));
        c.arg("--home")
            .arg(&self.home)
            .current_dir(self.dir.path())
            .env_remove("PD_HOME")
            .env_remove("PD_ACTOR")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if !actor.is_empty() {
            c.args(["--as", actor]);
        }
        c.args(args);
        c
    }

    /// Runs pd and asserts success; returns stdout (checked against its schema with --json).
    pub fn ok(&self, actor: &str, args: &[&str]) -> String {
        let out = self.pd(actor, args).output().expect("run pd");
        assert!(out.status.success(), "pd {args:?} failed: {}", text(&out));
        check_json(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs pd, asserts exit code `code` and that the home did not change; returns stderr.
    pub fn refused_with(&self, code: i32, actor: &str, args: &[&str]) -> String {
        let before = self.snapshot();
        let out = self.pd(actor, args).output().expect("run pd");
        assert_eq!(out.status.code(), Some(code), "pd {args:?}: {}", text(&out));
        check_json(args, &out);
        assert_eq!(self.snapshot(), before, "pd {args:?} was refused but changed the home");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A refusal by a rule: exit 1.
    pub fn refused(&self, actor: &str, args: &[&str]) -> String {
        self.refused_with(1, actor, args)
    }

    /// The ledger as JSON plus every file under the home with its size.
    pub fn snapshot(&self) -> Snapshot {
        let out = self.pd("", &["ledger", "log", "--all", "--json"]).output().expect("run pd");
        // A home that a running `pd serve` owns cannot be read here: compare through the server.
        assert!(out.status.success(), "snapshot of the home: {}", text(&out));
        let mut files = Vec::new();
        walk(&self.home, &self.home, &mut files);
        files.retain(|(p, _)| !p.starts_with("ledger/"));
        files.sort();
        Snapshot { log: String::from_utf8_lossy(&out.stdout).into_owned(), files }
    }

    /// `pd ledger log --json`, parsed.
    pub fn log(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok("", &["ledger", "log", "--all", "--json"])).expect("log JSON")
    }

    /// `pd state --json`, parsed.
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok("", &["state", "--json"])).expect("state JSON")
    }

    /// Runs `pd-verify ARGS…`.
    pub fn verify(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("pd-verify")).args(args).output().expect("run pd-verify");
        if args.contains(&"--json") {
            check_schema(if out.status.success() { "ledger-verify" } else { "error" }, args, &out);
        }
        out
    }

    /// [`World::standard`] plus `dev-2`, with `llm_policy.yaml` (`max_tokens: 1000`)
    /// packaged as PD-0.1.0 and approved by carol.
    pub fn packaged() -> World {
        let w = World::standard();
        w.ok("", &["key", "new", "dev-2", "--role", "target", "--env", "dev", "--generate-here"]);
        w.write("llm_policy.yaml", "max_tokens: 1000\n");
        w.ok("", &["ledger", "package", "llm_policy.yaml", "--reason", "first"]);
        w.ok("carol", &["ledger", "approve", "PD-0.1.0", "--reason", "ok"]);
        w
    }

    /// init, an approver `carol` and one target per environment (`dev-1`, `staging-1`, `prod-1`).
    pub fn standard() -> World {
        let w = World::new();
        w.ok("", &["init"]);
        w.ok("", &["key", "new", "carol", "--role", "approver", "--generate-here"]);
        for env in ["dev", "staging", "prod"] {
            w.ok(
                "",
                &["key", "new", &format!("{env}-1"), "--role", "target", "--env", env, "--generate-here"],
            );
        }
        w
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
}

/// Exit status, stdout and stderr for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child process that printed `http://ADDR` (or a marker line) on stdout; killed on drop.
pub struct Proc {
    child: std::process::Child,
    /// The URL it printed, if any (a word, or the `url` of a JSON line).
    pub url: String,
    /// The line with the marker.
    pub line: String,
}

impl Proc {
    /// Spawns `cmd`, sends its stderr to `log`, and waits until a stdout line contains
    /// `marker`; `url` is the `http://…` on that line.
    pub fn spawn(mut cmd: Command, log: &Path, marker: &str) -> Proc {
        use std::io::BufRead;
        let err = std::fs::File::create(log).expect("log file");
        cmd.stdout(std::process::Stdio::piped()).stderr(err).stdin(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains(marker) => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{cmd:?} exited before printing {marker:?}: {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout (into LOG.out) so the child never blocks on a full pipe.
        let mut out = std::fs::File::create(log.with_extension("out")).expect("log file");
        std::thread::spawn(move || {
            use std::io::Write;
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(out, "{l}");
            }
        });
        let json = serde_json::from_str::<serde_json::Value>(&line).ok();
        let url = json.and_then(|v| Some(v.get("url")?.as_str()?.to_string())).unwrap_or_else(|| {
            let word =
                line.split_whitespace().find(|w| w.starts_with("http://") || w.starts_with("https://"));
            word.unwrap_or_default().to_string()
        });
        Proc { child, url, line }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit; returns whether it
    /// exited cleanly (panics if it did not exit).
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id();
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        // A process that ignores SIGTERM fails the test instead of hanging it.
        self.wait_within(std::time::Duration::from_secs(30))
            .unwrap_or_else(|| panic!("process {pid} did not exit within 30 s of SIGTERM"))
    }

    /// Waits up to 60 s for the process to exit on its own; returns whether it succeeded.
    pub fn wait_exit(&mut self) -> bool {
        let pid = self.child.id();
        self.wait_within(std::time::Duration::from_secs(60))
            .unwrap_or_else(|| panic!("process {pid} did not exit within 60 s"))
    }

    /// Waits for the process to exit, on a thread so the wait has a deadline; `None` if it
    /// was still running then (it is killed).
    fn wait_within(&mut self, limit: std::time::Duration) -> Option<bool> {
        let pid = self.child.id();
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("spawn true"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = tx.send(child.wait().map(|s| s.success()));
            child
        });
        match rx.recv_timeout(limit) {
            Ok(status) => Some(status.expect("wait")),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                None
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port of its URL.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in URL")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 request over loopback: returns status and body.
pub fn http(url: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = http_with(url, method, path, &[], body);
    (status, body)
}

/// [`http`] with extra request headers; also returns the response head.
pub fn http_with(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nContent-Type: application/cbor\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response") + 4;
    let status = String::from_utf8_lossy(&out[9..12]).parse().expect("status");
    (status, String::from_utf8_lossy(&out[..split]).to_lowercase(), out[split..].to_vec())
}

/// A running `pd serve` over a world's home, with agents and example targets beside it.
pub struct Net<'w> {
    /// The world whose home the server owns.
    pub w: &'w World,
    /// The server.
    pub server: Proc,
    procs: Vec<(String, Proc)>,
}

impl<'w> Net<'w> {
    /// Starts `pd serve` on a free loopback port.
    pub fn start(w: &'w World) -> Net<'w> {
        let server = Self::serve(w, 0, &[]);
        Net { w, server, procs: Vec::new() }
    }

    /// Starts `pd serve EXTRA…` on a free loopback port.
    pub fn start_with(w: &'w World, extra: &[&str]) -> Net<'w> {
        let server = Self::serve(w, 0, extra);
        Net { w, server, procs: Vec::new() }
    }

    fn serve(w: &World, port: u16, extra: &[&str]) -> Proc {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let cmd = w.pd("", &args);
        Proc::spawn(cmd, &w.path(&format!("serve-{port}.log")), "listening on")
    }

    /// Kills the server with SIGKILL and starts it again on the same port.
    pub fn restart_server(&mut self) {
        let port = self.server.port();
        self.server.kill();
        self.server = Self::serve(self.w, port, &[]);
    }

    /// Kills the server and serves another home on the same port in its place.
    pub fn swap_home(&mut self, home: &Path) {
        let port = self.server.port();
        self.server.kill();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin("pd"));
        cmd.arg("--home").arg(home).args(["serve", "--listen", &listen]).env_remove("PD_ACTOR");
        self.server = Proc::spawn(cmd, &self.w.path(&format!("serve-swapped-{port}.log")), "listening on");
    }

    /// The running agent process of `target`.
    pub fn agent_proc(&mut self, target: &str) -> &mut Proc {
        let prefix = format!("agent-{target}:");
        &mut self.procs.iter_mut().find(|(n, _)| n.starts_with(&prefix)).expect("agent running").1
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// `pd --server URL …` as `actor`, asserting success.
    pub fn ok(&self, actor: &str, args: &[&str]) -> String {
        let mut full = vec!["--server", self.url()];
        full.extend_from_slice(args);
        self.w.ok(actor, &full)
    }

    /// `pd --server URL …` as `actor`.
    pub fn run(&self, actor: &str, args: &[&str]) -> Output {
        let mut full = vec!["--server", self.url()];
        full.extend_from_slice(args);
        self.w.pd(actor, &full).output().expect("run pd")
    }

    /// `pd ledger log --json` from the server, parsed.
    pub fn log(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok("", &["ledger", "log", "--all", "--json"])).expect("log JSON")
    }

    /// Returns `check(self)` once it is `Some`, re-checking each time the ledger grows
    /// (long-polling the server), for at most 60 s.
    pub fn wait_for<T>(&self, check: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(t) = check(self) {
                return t;
            }
            assert!(std::time::Instant::now() < deadline, "gave up waiting after 60 s");
            let len = self.log().len();
            http(self.url(), "GET", &format!("/v1/head?after={len}&wait_ms=5000"), b"");
        }
    }

    /// The agent directory of `target`.
    pub fn agent_dir(&self, target: &str) -> PathBuf {
        self.w.path(&format!("agents/{target}"))
    }

    /// Starts an example target (refusing `refuse`) and the agent of key `target` in `env`.
    pub fn agent(&mut self, target: &str, env: &str, refuse: &[&str]) {
        self.agent_with(target, env, refuse, &[]);
    }

    /// [`Net::agent`] with extra `pd agent` arguments.
    pub fn agent_with(&mut self, target: &str, env: &str, refuse: &[&str], extra: &[&str]) {
        let refuse: Vec<&str> = refuse.iter().flat_map(|r| ["--refuse", r]).collect();
        self.agent_and_target(target, env, &refuse, extra);
    }

    /// An example target started with `pd example-target TARGET_ARGS…` and its agent with
    /// `pd agent … AGENT_ARGS…`, where `{target}` stands for the target's base URL.
    pub fn agent_and_target(&mut self, target: &str, env: &str, target_args: &[&str], extra: &[&str]) {
        let dir = self.agent_dir(target);
        let mut t = Command::new(bin("pd"));
        t.args(["example-target", "--listen", "127.0.0.1:0", "--policy-dir"]).arg(dir.join("current"));
        t.args(target_args);
        let target_proc = Proc::spawn(t, &self.w.path(&format!("target-{target}.log")), "listening on");
        let reload = format!("{}/reload", target_proc.url);
        let extra: Vec<String> = extra.iter().map(|a| a.replace("{target}", &target_proc.url)).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.procs.push((format!("target-{target}"), target_proc));
        self.start_agent(target, env, &reload, &extra);
    }

    fn start_agent(&mut self, target: &str, env: &str, reload: &str, extra: &[&str]) {
        let dir = self.agent_dir(target).to_string_lossy().into_owned();
        let mut args =
            vec!["--server", self.url(), "agent", "--env", env, "--dir", &dir, "--reload-url", reload];
        args.extend_from_slice(extra);
        let cmd = self.w.pd(target, &args);
        // With --health-listen the agent's URL is its health address, printed after "following".
        let marker = if extra.contains(&"--health-listen") { "agent health on" } else { "following" };
        let p = Proc::spawn(cmd, &self.w.path(&format!("agent-{target}.log")), marker);
        self.procs.push((format!("agent-{target}:{env}:{reload}"), p));
    }

    /// Kills the agent of `target` with SIGKILL.
    pub fn kill_agent(&mut self, target: &str) {
        let prefix = format!("agent-{target}:");
        self.procs.retain(|(name, _)| !name.starts_with(&prefix));
    }

    /// Starts the agent of `target` again with its old settings (its target kept running).
    pub fn restart_agent(&mut self, target: &str, env: &str) {
        self.restart_agent_with(target, env, &[]);
    }

    /// [`Net::restart_agent`] with extra `pd agent` arguments.
    pub fn restart_agent_with(&mut self, target: &str, env: &str, extra: &[&str]) {
        let t = self.procs.iter().find(|(n, _)| n == &format!("target-{target}")).expect("target running");
        let reload = format!("{}/reload", t.1.url);
        self.start_agent(target, env, &reload, extra);
    }

    /// Replaces `target`'s example target with one on the same port that refuses nothing
    /// (the target's owner fixed it); its agent keeps running.
    pub fn fix_target(&mut self, target: &str) {
        let name = format!("target-{target}");
        let i = self.procs.iter().position(|(n, _)| n == &name).expect("target running");
        let (_, mut old) = self.procs.remove(i);
        let listen = old.url.trim_start_matches("http://").to_string();
        old.kill();
        let mut t = Command::new(bin("pd"));
        t.args(["example-target", "--listen", &listen, "--policy-dir"])
            .arg(self.agent_dir(target).join("current"));
        let fixed = Proc::spawn(t, &self.w.path(&format!("target-{target}-fixed.log")), "listening on");
        self.procs.push((name, fixed));
    }

    /// The base URL of `target`'s example target.
    pub fn target_url(&self, target: &str) -> String {
        let t = self.procs.iter().find(|(n, _)| n == &format!("target-{target}")).expect("target running");
        t.1.url.clone()
    }

    /// `GET /version` of `target`'s example target.
    pub fn loaded(&self, target: &str) -> serde_json::Value {
        let t = self.procs.iter().find(|(n, _)| n == &format!("target-{target}")).expect("target running");
        let (status, body) = http(&t.1.url, "GET", "/version", b"");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("version JSON")
    }
}

/// Exports an honest appender would never write, for showing that `pd-verify` refuses them.
pub mod forge {
    use pd_ledger::export::Export;
    use pd_ledger::{Body, Entry, Push, SecretKey, SignedEntry, Version};
    use std::path::Path;

    /// The export at `file` with one more entry: a push of `version` to `env` signed by the
    /// home's admin key and chained to the last entry, whatever the rules say. The head is
    /// left as it was: the verifier replays entries before it checks the head.
    pub fn append_push(file: &Path, home: &Path, env: &str, version: &str) -> Vec<u8> {
        append(file, home, version, |version, package| {
            Body::Push(Push { env: env.into(), version, package, waves: Vec::new(), reason: "forged".into() })
        })
    }

    /// The export at `file` with one more entry, `make(version, its package hash)`, signed
    /// by the home's admin key and chained to the last entry (see [`append_push`]).
    pub fn append(
        file: &Path,
        home: &Path,
        version: &str,
        make: impl FnOnce(Version, pd_ledger::Hash) -> Body,
    ) -> Vec<u8> {
        let mut export = Export::decode(&std::fs::read(file).expect("export")).expect("an export");
        let entries: Vec<SignedEntry> =
            export.entries.iter().map(|b| SignedEntry::decode(b).expect("an entry")).collect();
        let version: Version = version.parse().expect("a version");
        let package = entries
            .iter()
            .find_map(|e| match &e.entry.body {
                Body::Package(p) if p.version == version => Some(p.tarball.blake3),
                _ => None,
            })
            .expect("the version is packaged");
        let last = entries.last().expect("a ledger");
        let ledger = match &entries[0].entry.body {
            Body::Genesis(g) => g.ledger_id,
            _ => panic!("a ledger starts with genesis"),
        };
        let text = std::fs::read_to_string(home.join("keys/admin.ed25519")).expect("admin key");
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).expect("a key file");
        let body = make(version, package);
        let seq = last.entry.seq + 1;
        let forged = Entry::sign(
            &ledger,
            seq,
            last.id,
            last.entry.time_ms + 1,
            "admin",
            body,
            &SecretKey::from_seed(seed),
        );
        export.entries.push(serde_bytes::ByteBuf::from(forged.bytes));
        export.encode()
    }
}
