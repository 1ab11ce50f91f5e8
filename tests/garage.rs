//! A real S3 server for tests: a three-node Garage cluster on loopback with replication
//! factor 3, a bucket `pd-test` and a key allowed on it, torn down on drop.
//!
//! The `garage` binary comes from `PD_GARAGE`, else `PD_TOOLS/bin/garage` (default
//! `~/.cache/pd-tools`), where `scripts/install-garage` (run by `scripts/test`) puts it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use crate::Proc;

/// The bucket every cluster has.
pub const BUCKET: &str = "pd-test";

/// A running cluster.
pub struct Garage {
    dir: tempfile::TempDir,
    bin: PathBuf,
    nodes: Vec<Option<Proc>>,
    s3_ports: Vec<u16>,
    key_id: String,
    secret: String,
}

fn garage_bin() -> PathBuf {
    let bin = std::env::var_os("PD_GARAGE").map(PathBuf::from).unwrap_or_else(|| {
        let tools = std::env::var_os("PD_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/pd-tools")
        });
        tools.join("bin/garage")
    });
    assert!(bin.exists(), "{} is missing: run scripts/install-garage (scripts/test does)", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Garage {
    /// Starts three nodes, joins them, applies a layout and creates the bucket and key.
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let secret = format!(
            "{:032x}{:032x}",
            t.as_nanos(),
            u128::from(std::process::id()) << 64 | u128::from(free_port())
        );
        let mut g = Garage {
            dir,
            bin,
            nodes: Vec::new(),
            s3_ports: Vec::new(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..3 {
            let (rpc_port, s3_port, admin_port) = (free_port(), free_port(), free_port());
            let node = g.dir.path().join(format!("node{i}"));
            let config = format!(
                "metadata_dir = \"{n}/meta\"\ndata_dir = \"{n}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
                n = node.display()
            );
            std::fs::create_dir_all(&node).expect("node dir");
            std::fs::write(node.join("garage.toml"), config).expect("config");
            g.nodes.push(Some(g.spawn(i)));
            g.s3_ports.push(s3_port);
        }
        let ids: Vec<String> = (0..3).map(|i| g.cli(i, &["node", "id", "-q"]).trim().to_string()).collect();
        for id in &ids[1..] {
            g.cli(0, &["node", "connect", id]);
        }
        for id in &ids {
            let short = &id[..16];
            g.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        g.cli(0, &["layout", "apply", "--version", "1"]);
        let key = g.cli(0, &["key", "create", "pd-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in `garage key create` output:\n{key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.bucket(BUCKET);
        g
    }

    /// Creates the bucket `name`, readable and writable with the cluster's key.
    pub fn bucket(&self, name: &str) {
        self.cli(0, &["bucket", "create", name]);
        self.cli(0, &["bucket", "allow", "--read", "--write", "--owner", name, "--key", "pd-key"]);
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}/garage.toml"))
    }

    fn spawn(&self, i: usize) -> Proc {
        // Garage logs to stderr; the harness watches stdout for the ready line.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec \"$0\" -c \"$1\" server 2>&1")
            .arg(&self.bin)
            .arg(self.config(i))
            .env("RUST_LOG", "garage=info");
        let log = self.dir.path().join(format!("node{i}.log"));
        Proc::spawn(cmd, &log, "S3 API server listening")
    }

    /// Runs the garage CLI against node `i`, asserting success; returns stdout.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let out =
            Command::new(&self.bin).arg("-c").arg(self.config(i)).args(args).output().expect("run garage");
        assert!(out.status.success(), "garage {args:?}: {}", crate::text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills node `i` with SIGKILL (node 0 serves the S3 endpoint the clients use).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    /// The S3 endpoint (node 0).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_ports[0])
    }

    /// The environment under which pd (through aws-config) reaches this cluster and nothing
    /// else: endpoint, region, the key, and no shared config files.
    pub fn env(&self) -> Vec<(String, String)> {
        let none = self.dir.path().join("no-aws-config").display().to_string();
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "garage".to_string()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_CONFIG_FILE", none.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", none),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Replaces the object `key` in the bucket with `bytes`, with a standard S3 client
    /// (curl's SigV4), bypassing pd.
    pub fn overwrite(&self, key: &str, bytes: &[u8]) {
        let file = self.dir.path().join("overwrite.bin");
        std::fs::write(&file, bytes).expect("write");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-X", "PUT", "--aws-sigv4", "aws:amz:garage:s3", "--user"])
            .arg(format!("{}:{}", self.key_id, self.secret))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/{BUCKET}/{key}", self.endpoint()))
            .output()
            .expect("curl is installed");
        assert!(out.status.success(), "curl PUT {key}: {}", crate::text(&out));
    }
}
