//! Ledgers for tests and benches (feature `testkit`, enabled only by dev-dependencies).

use crate::storage::LedgerStore;
use crate::*;

/// A key declaration in holder custody (with a real proof of possession) and a placeholder
/// OpenPGP certificate.
pub fn decl(name: &str, key: &SecretKey, roles: &[Role], env: Option<&str>) -> KeyDecl {
    EnrolmentRequest::create(name, key, Some("CERT".into())).decl(roles.to_vec(), env.map(String::from))
}

/// A push of `version` (tarball `package`) to `env` in the environment's waves.
pub fn push(env: &str, version: Version, package: Hash) -> Body {
    Body::Push(Push { env: env.into(), version, package, waves: Vec::new(), reason: "go".into() })
}

/// A package body whose tarball hash is `hash`.
pub fn package(version: Version, hash: Hash) -> Body {
    Body::Package(Package {
        version,
        name: "p".into(),
        files: vec![FileDigest { path: "p.yaml".into(), size: 1, sha256: hash, blake3: hash }],
        tarball: Artifact { blake3: hash, sha256: hash, size: 1 },
        openpgp_sig: "SIG".into(),
        checked: Default::default(),
        source: None,
        reason: "test".into(),
    })
}

/// A ledger where `dev-1` may acknowledge [`Deployed::version`] any number of times.
pub struct Deployed<S: LedgerStore> {
    /// The ledger.
    pub ledger: Ledger<S>,
    /// `admin`: admin, author, deployer, log.
    pub admin: SecretKey,
    /// `dev-1`: the target in `dev`.
    pub target: SecretKey,
    /// The pushed version.
    pub version: Version,
    /// Its tarball hash.
    pub package: Hash,
}

/// Genesis (one env, `dev`), an approver, a target, a package, its approval and a push.
pub fn deployed<S: LedgerStore>(store: S) -> Deployed<S> {
    let admin = SecretKey::from_seed([1; 32]);
    let carol = SecretKey::from_seed([2; 32]);
    let target = SecretKey::from_seed([3; 32]);
    let (version, hash) = (Version::new(1, 0, 0), Hash([5; 32]));
    let genesis = Body::Genesis(Genesis {
        format: crate::entry::FORMAT_VERSION,
        ledger_id: Hash([9; 32]),
        envs: vec!["dev".into()],
        approvals_required: 1,
        admin_approvals: 1,
        min_targets: 1,
        keys: vec![decl("admin", &admin, &[Role::Admin, Role::Author, Role::Deployer, Role::Log], None)],
    });
    let mut ledger = Ledger::open(store).expect("empty store opens");
    let steps = [
        ("admin", &admin, genesis),
        ("admin", &admin, Body::KeyAdd(decl("carol", &carol, &[Role::Approver], None))),
        ("admin", &admin, Body::KeyAdd(decl("dev-1", &target, &[Role::Target], Some("dev")))),
        ("admin", &admin, package(version, hash)),
        ("carol", &carol, Body::Approve(Approve { version, package: hash, reason: "ok".into() })),
        ("admin", &admin, push("dev", version, hash)),
    ];
    for (actor, key, body) in steps {
        ledger.sign_append(actor, key, 1, body).expect("fixture entry is valid");
    }
    Deployed { ledger, admin, target, version, package: hash }
}

impl<S: LedgerStore> Deployed<S> {
    /// A `loaded` ack of the pushed version.
    pub fn ack(&self) -> Body {
        Body::Ack(Ack {
            env: "dev".into(),
            version: self.version,
            package: self.package,
            outcome: Outcome::Loaded,
        })
    }

    /// Appends `n` acks by `dev-1` in batches of up to 10,000.
    pub fn append_acks(&mut self, n: usize) {
        let mut left = n;
        while left > 0 {
            let k = left.min(10_000);
            let bodies = (0..k).map(|_| self.ack()).collect();
            let batch = self.ledger.sign_batch("dev-1", &self.target, 2, bodies);
            self.ledger.append_batch(&batch).expect("acks are valid");
            left -= k;
        }
    }

    /// An export of the whole ledger with a head signed by `admin`.
    pub fn export(&self) -> crate::export::Export {
        let entries =
            self.ledger.entries(0).map(|e| serde_bytes::ByteBuf::from(e.expect("entry").bytes)).collect();
        let head = crate::export::Head::sign(
            self.ledger.state(),
            "admin",
            3,
            crate::export::Contents::EntriesOnly,
            &self.admin,
        );
        crate::export::Export { format: crate::export::FORMAT.into(), entries, artifacts: vec![], head }
    }
}
