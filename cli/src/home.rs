//! The pd home: config, secret keys, the ledger and the artifact store under one directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pd_ledger::file_store::FileStore;
use pd_ledger::{Ledger, SecretKey, StorageError};
use pd_server::s3::S3Store;
use pd_store::{BlobStore, FsStore, PgpKey};
use serde::{Deserialize, Serialize};

/// Settings kept in `config.toml` under the home.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The acting key when neither `--as` nor `PD_ACTOR` is given.
    pub actor: String,
    /// The `pd serve` to use when `--server` / `PD_SERVER` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The artifact store when it is not the home's `objects/` directory: `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Whether `pd ledger deploy` rolls back a failed environment without `--auto-rollback`.
    #[serde(default)]
    pub auto_rollback: bool,
    /// How each policy set's files are checked before they are packaged (`pd policy`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub policy: std::collections::BTreeMap<String, PolicyConfig>,
}

/// The checks of one policy set, beyond parsing by file type.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A JSON Schema every `.yaml`/`.yml`/`.json`/`.toml` file must satisfy, relative to the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// A command (`sh -c`) that must exit 0 for the files, run in a directory holding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
}

/// An opened home directory.
#[derive(Clone)]
pub struct Home {
    /// Its path.
    pub dir: PathBuf,
    /// Its config.
    pub config: Config,
    /// The artifact store, opened once (an S3 store brings a client and a runtime).
    store: Arc<OnceLock<Arc<dyn BlobStore>>>,
}

const CONFIG: &str = "config.toml";
/// Written by `pd serve` into the home it serves: its URL.
pub const SERVED_BY: &str = "serve.url";

const LOCK_WAIT: Duration = Duration::from_secs(30);

/// `word` as a shell reads it back: as is when it is plain, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Builds a new home with `build` in a sibling temp directory and renames it to `dir`, so a
/// failure leaves nothing behind. Refuses a `dir` that holds anything.
pub fn create_new<T>(dir: &Path, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if dir.join(CONFIG).exists() || dir.join("ledger").exists() {
        crate::refuse!("{} already holds a pd ledger; pd never overwrites one", dir.display());
    }
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{} exists and is not a directory; choose another --home", dir.display());
    }
    if dir.exists() && dir.read_dir()?.next().is_some() {
        crate::refuse!("{} exists and is not empty; choose another --home", dir.display());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let cannot = || format!("cannot create a pd home at {}", dir.display());
    fs::create_dir_all(parent).with_context(cannot)?;
    let tmp = tempfile::Builder::new().prefix(".pd-new-").tempdir_in(parent).with_context(cannot)?;
    let built = build(tmp.path())?;
    if dir.exists() {
        fs::remove_dir(dir)?;
    }
    fs::rename(tmp.path(), dir).with_context(|| format!("moving the new home into {}", dir.display()))?;
    std::mem::forget(tmp);
    Ok(built)
}

impl Home {
    /// Opens an initialized home.
    pub fn open(dir: &Path) -> Result<Home> {
        let path = dir.join(CONFIG);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "no pd home at {}: run `pd init` there, or point --home / PD_HOME at one",
                    dir.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid pd config", path.display()))?;
        Ok(Home { dir: dir.to_path_buf(), config, store: Arc::default() })
    }

    /// Replaces the config file with `self.config`, atomically.
    pub fn save_config(&self) -> Result<()> {
        write_file_atomic(&self.dir.join(CONFIG), toml::to_string(&self.config)?.as_bytes())
    }

    /// Writes a new home's config (the caller created the directory).
    pub fn create(dir: &Path, config: Config) -> Result<Home> {
        secret_dir(&dir.join("keys"))?;
        write_file_atomic(&dir.join(CONFIG), toml::to_string(&config)?.as_bytes())?;
        Ok(Home { dir: dir.to_path_buf(), config, store: Arc::default() })
    }

    /// The URL of the `pd serve` that holds this home's ledger now, if one does (it writes
    /// [`SERVED_BY`] when it listens and removes it when it stops).
    pub fn served_by(&self) -> Option<String> {
        let url = fs::read_to_string(self.dir.join(SERVED_BY)).ok()?;
        FileStore::in_use(&self.dir.join("ledger")).then(|| url.trim().to_string())
    }

    /// Opens the ledger, waiting a while if another pd process holds it; a `pd serve` holds
    /// it for good, so then it fails at once, naming the command that goes through the server.
    pub fn ledger(&self) -> Result<Ledger<FileStore>> {
        let path = self.dir.join("ledger");
        let start = Instant::now();
        let mut warned = false;
        let store = loop {
            match FileStore::open(&path) {
                Ok(s) => break s,
                Err(StorageError::Locked) if start.elapsed() < LOCK_WAIT => {
                    if let Some(url) = self.served_by() {
                        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_word(&a)).collect();
                        bail!(
                            "the ledger in {} is held by `pd serve` at {url}; run the command through it: \
                             pd --server {url} {}",
                            self.dir.display(),
                            args.join(" ")
                        );
                    }
                    if !warned {
                        eprintln!("waiting for another pd process to release the ledger…");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).with_context(|| format!("opening the ledger in {}", path.display())),
            }
        };
        if let Some(t) = store.torn() {
            eprintln!(
                "warning: the ledger's last {} bytes (after entry #{}) were unreadable — an append cut short \
                 by a crash or power loss, never reported — and were set aside in {}",
                t.bytes,
                t.entries.saturating_sub(1),
                t.kept
            );
        }
        Ok(Ledger::open(store)?)
    }

    /// The artifact store: the configured S3 location, else `objects/` in the home.
    pub fn store(&self) -> Result<Arc<dyn BlobStore>> {
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        let opened: Arc<dyn BlobStore> = match &self.config.store {
            Some(url) => Arc::new(S3Store::open(url)?),
            None => Arc::new(FsStore::open(&self.objects_dir())?),
        };
        Ok(self.store.get_or_init(|| opened).clone())
    }

    /// Whether the home holds a ledger (not only keys, as `pd key gen` makes).
    pub fn has_ledger(&self) -> bool {
        self.dir.join("ledger").exists()
    }

    /// The home's own `objects/` directory.
    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    fn key_path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{name}.{ext}"))
    }

    /// The Ed25519 secret key of `name`.
    pub fn secret_key(&self, name: &str) -> Result<SecretKey> {
        let path = self.key_path(name, "ed25519");
        if !path.exists() {
            bail!(
                "no secret key {name:?} in this home ({}): act as a key that lives here with --as, or create one with `pd key new`",
                path.display()
            );
        }
        read_key_file(&path)
    }

    /// The OpenPGP secret key of `name`.
    pub fn pgp_key(&self, name: &str) -> Result<PgpKey> {
        read_pgp_file(&self.key_path(name, "openpgp"))
    }

    /// The directory holding this home's secret keys.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Writes a new key's secret files, readable only by their owner. Refuses to overwrite.
    pub fn save_keys(&self, name: &str, key: &SecretKey, pgp: &PgpKey) -> Result<()> {
        save_keys(&self.keys_dir(), name, key, pgp)
    }

    /// Removes a key's secret files (after a refused enrollment).
    pub fn forget_keys(&self, name: &str) {
        let _ = fs::remove_file(self.key_path(name, "ed25519"));
        let _ = fs::remove_file(self.key_path(name, "openpgp"));
    }

    /// Writes a rotation's new secret as `NAME.ed25519.next` (and `NAME.openpgp.next`), to
    /// take over from `NAME.ed25519` once the ledger makes it the name's key
    /// ([`Home::promote_next`]). Refuses while another rotation of NAME waits here.
    pub fn save_next_keys(&self, name: &str, key: &SecretKey, pgp: &PgpKey) -> Result<()> {
        let ed = self.key_path(name, "ed25519.next");
        let pg = self.key_path(name, "openpgp.next");
        write_secret(&ed, format!("{}\n", hex::encode(key.seed())).as_bytes())?;
        if let Err(e) = write_secret(&pg, &pgp.to_secret_bytes()?) {
            let _ = fs::remove_file(&ed);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a rotation's new secret after a refused rotation.
    pub fn forget_next_keys(&self, name: &str) {
        let _ = fs::remove_file(self.key_path(name, "ed25519.next"));
        let _ = fs::remove_file(self.key_path(name, "openpgp.next"));
    }

    /// Follows a rotation done in this home: when `NAME.ed25519.next` holds `current` (the
    /// ledger's key of `name` from entry `seq` on), moves the old files aside as
    /// `NAME.ed25519.rotated-SEQ` (kept: the old key signed history) and the next ones into
    /// place, the OpenPGP file first, so an interrupted move is finished by the next call.
    /// Returns whether it did.
    pub fn promote_next(&self, name: &str, current: &pd_ledger::PublicKey, seq: u64) -> Result<bool> {
        let next = self.key_path(name, "ed25519.next");
        if !next.exists() || read_key_file(&next)?.public() != *current {
            return Ok(false);
        }
        for ext in ["openpgp", "ed25519"] {
            let next = self.key_path(name, &format!("{ext}.next"));
            if !next.exists() {
                continue; // moved by an earlier, interrupted call
            }
            let path = self.key_path(name, ext);
            if path.exists() {
                let aside = self.key_path(name, &format!("{ext}.rotated-{seq}"));
                fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
            }
            fs::rename(&next, &path).with_context(|| format!("moving {} into place", next.display()))?;
        }
        Ok(true)
    }

    /// A home that is only a directory of keys (`--key FILE` with `--server`): its actor is
    /// the file's name, its ledger the server's.
    pub fn keys_only(key_file: &Path, server: &str) -> Home {
        let dir = key_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let actor = key_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let config = Config {
            actor,
            server: Some(server.into()),
            store: None,
            auto_rollback: false,
            policy: Default::default(),
        };
        Home { dir: dir.to_path_buf(), config, store: Arc::default() }
    }
}

/// Writes `DIR/NAME.ed25519` and `DIR/NAME.openpgp`, readable only by their owner. Refuses
/// to overwrite; on failure leaves neither.
pub fn save_keys(dir: &Path, name: &str, key: &SecretKey, pgp: &PgpKey) -> Result<()> {
    let ed = dir.join(format!("{name}.ed25519"));
    let pg = dir.join(format!("{name}.openpgp"));
    write_secret(&ed, format!("{}\n", hex::encode(key.seed())).as_bytes())?;
    if let Err(e) = write_secret(&pg, &pgp.to_secret_bytes()?) {
        let _ = fs::remove_file(&ed);
        return Err(e);
    }
    Ok(())
}

/// Reads an OpenPGP secret key file as pd writes them.
pub fn read_pgp_file(path: &Path) -> Result<PgpKey> {
    let bytes = fs::read(path).with_context(|| format!("no OpenPGP secret key at {}", path.display()))?;
    Ok(PgpKey::from_secret_bytes(&bytes)?)
}

/// Reads a secret key file as pd writes them: 64 hex digits.
pub fn read_key_file(path: &Path) -> Result<SecretKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| anyhow::anyhow!("{} is not a pd secret key file (64 hex digits)", path.display()))?;
    Ok(SecretKey::from_seed(seed))
}

/// Draws a fresh Ed25519 key from the OS.
pub fn new_secret_key() -> Result<SecretKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    Ok(SecretKey::from_seed(seed))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} already exists; pd never overwrites a secret key", path.display())
        }
        _ => anyhow::Error::new(e).context(format!("creating {}", path.display())),
    })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Creates `dir` (and its parents) if missing, readable only by its owner.
pub fn secret_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    let _ = (path, mode);
    Ok(())
}

/// Writes `bytes` to `path` through a synced temp file and a rename: never half-written.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub use pd_server::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            actor: "admin".into(),
            server: None,
            store: None,
            auto_rollback: false,
            policy: Default::default(),
        };
        let home = Home::create(dir.path(), config).expect("home");
        (dir, home)
    }

    #[test]
    fn a_rotation_prepared_here_takes_over_only_once_the_ledger_holds_its_key_and_resumes_if_cut() {
        let (_dir, home) = home();
        let pgp = pd_store::openpgp::generate("admin (pd)").expect("pgp");
        let (old, new) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        home.save_keys("admin", &old, &pgp).expect("old");
        home.save_next_keys("admin", &new, &pgp).expect("next");
        assert!(!home.promote_next("admin", &old.public(), 5).expect("promote"), "not the ledger's key yet");
        assert_eq!(home.secret_key("admin").expect("key").public(), old.public());
        // Cut after the OpenPGP half moved: the next call finishes the move.
        fs::rename(home.key_path("admin", "openpgp"), home.key_path("admin", "openpgp.rotated-5"))
            .expect("mv");
        fs::rename(home.key_path("admin", "openpgp.next"), home.key_path("admin", "openpgp")).expect("mv");
        assert!(home.promote_next("admin", &new.public(), 5).expect("promote"));
        assert_eq!(home.secret_key("admin").expect("key").public(), new.public());
        assert!(home.pgp_key("admin").is_ok());
        assert_eq!(
            read_key_file(&home.key_path("admin", "ed25519.rotated-5")).expect("kept").public(),
            old.public()
        );
        assert!(!home.key_path("admin", "ed25519.next").exists());
    }
}
