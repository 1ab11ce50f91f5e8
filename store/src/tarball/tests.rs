use super::*;
use proptest::prelude::*;

fn files() -> Vec<PolicyFile> {
    vec![
        PolicyFile { path: "llm_policy.yaml".into(), bytes: b"models: {}\n".to_vec() },
        PolicyFile { path: "extra/roles.yaml".into(), bytes: b"roles: []\n".to_vec() },
    ]
}

fn raw_tar(members: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data) in members {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn manifest_for(files: &[(&str, &[u8])]) -> Vec<u8> {
    let m = Manifest {
        name: "p".into(),
        version: "PD-1.0.0".into(),
        files: files
            .iter()
            .map(|(p, b)| {
                let d = ArtifactDigest::of(b);
                ManifestFile {
                    path: p.to_string(),
                    size: d.size,
                    sha256: hex::encode(d.sha256),
                    blake3: hex::encode(d.blake3),
                }
            })
            .collect(),
    };
    serde_json::to_vec(&m).unwrap()
}

#[test]
fn builds_are_byte_identical_and_content_sensitive() {
    let a = build("llm_policy", "PD-23.1.0", &files(), &Limits::default()).unwrap();
    let mut reversed = files();
    reversed.reverse();
    let b = build("llm_policy", "PD-23.1.0", &reversed, &Limits::default()).unwrap();
    assert_eq!(a.bytes, b.bytes, "input order does not matter");
    let mut changed = files();
    changed[0].bytes[0] ^= 1;
    let c = build("llm_policy", "PD-23.1.0", &changed, &Limits::default()).unwrap();
    assert_ne!(a.digest.blake3, c.digest.blake3);
    assert_eq!(a.files[0].path, "extra/roles.yaml", "sorted by path");
    let back = read(&a.bytes, &Limits::default()).unwrap();
    assert_eq!(back.manifest, a.manifest);
    assert_eq!(back.manifest.files[1].path, "llm_policy.yaml");
}

proptest! {
    #[test]
    fn round_trip(contents in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8})?\\.yaml", proptest::collection::vec(any::<u8>(), 0..300), 1..6)) {
        let files: Vec<PolicyFile> = contents.iter().map(|(p, b)| PolicyFile { path: p.clone(), bytes: b.clone() }).collect();
        let built = build("p", "PD-1.2.3", &files, &Limits::default()).unwrap();
        let back = read(&built.bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back.files, files);
        prop_assert_eq!(back.manifest.version, "PD-1.2.3");
    }
}

#[test]
fn links_absolute_paths_and_dotdot_are_refused() {
    let l = Limits::default();
    let m = manifest_for(&[]);
    let link = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"evil", tar::EntryType::Symlink, b""),
    ]);
    assert!(matches!(read(&link, &l), Err(TarballError::NotRegular { .. })));
    let dev =
        raw_tar(&[(MANIFEST.as_bytes(), tar::EntryType::Regular, &m), (b"dev", tar::EntryType::Char, b"")]);
    assert!(matches!(read(&dev, &l), Err(TarballError::NotRegular { .. })));
    let abs = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"/etc/passwd", tar::EntryType::Regular, b"x"),
    ]);
    assert!(matches!(read(&abs, &l), Err(TarballError::BadPath { .. })));
    let up = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"a/../../x", tar::EntryType::Regular, b"x"),
    ]);
    assert!(matches!(read(&up, &l), Err(TarballError::BadPath { .. })));
    let first = raw_tar(&[(b"a.yaml", tar::EntryType::Regular, b"x")]);
    assert!(matches!(read(&first, &l), Err(TarballError::Manifest(_))));
}

#[test]
fn manifest_must_match_the_files() {
    let l = Limits::default();
    let m = manifest_for(&[("a.yaml", b"one")]);
    let lying = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"a.yaml", tar::EntryType::Regular, b"two"),
    ]);
    assert!(matches!(read(&lying, &l), Err(TarballError::Manifest(_))));
    let extra = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"a.yaml", tar::EntryType::Regular, b"one"),
        (b"b.yaml", tar::EntryType::Regular, b"x"),
    ]);
    assert!(matches!(read(&extra, &l), Err(TarballError::Manifest(_))));
    assert!(matches!(read(b"not gzip at all", &l), Err(TarballError::Malformed(_))));
}

#[test]
fn a_gzip_bomb_is_stopped() {
    let zeros = vec![0u8; 50 << 20];
    let m = manifest_for(&[("z.yaml", &zeros)]);
    let bomb = raw_tar(&[
        (MANIFEST.as_bytes(), tar::EntryType::Regular, &m),
        (b"z.yaml", tar::EntryType::Regular, &zeros),
    ]);
    assert!(bomb.len() < 200_000, "compressed to {}", bomb.len());
    assert!(matches!(read(&bomb, &Limits::default()), Err(TarballError::Bomb { .. })));
}

#[test]
fn every_limit_is_enforced() {
    let built = build("p", "PD-1.0.0", &files(), &Limits::default()).unwrap();
    let tiny = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    assert!(matches!(
        build("p", "v", &files(), &tiny(|l| l.max_files = 1)),
        Err(TarballError::TooManyFiles { .. })
    ));
    assert!(matches!(read(&built.bytes, &tiny(|l| l.max_files = 1)), Err(TarballError::TooManyFiles { .. })));
    assert!(matches!(
        build("p", "v", &files(), &tiny(|l| l.max_file_bytes = 5)),
        Err(TarballError::FileTooLarge { .. })
    ));
    assert!(matches!(
        read(&built.bytes, &tiny(|l| l.max_file_bytes = 5)),
        Err(TarballError::FileTooLarge { .. })
    ));
    assert!(matches!(
        build("p", "v", &files(), &tiny(|l| l.max_tarball_bytes = 10)),
        Err(TarballError::TarballTooLarge { .. })
    ));
    assert!(matches!(
        read(&built.bytes, &tiny(|l| l.max_tarball_bytes = 10)),
        Err(TarballError::TarballTooLarge { .. })
    ));
    assert!(matches!(
        read(&built.bytes, &tiny(|l| l.max_unpacked_bytes = 600)),
        Err(TarballError::UnpackedTooLarge { .. })
    ));
    assert!(matches!(
        build("p", "v", &files(), &tiny(|l| l.max_path_bytes = 8)),
        Err(TarballError::BadPath { .. })
    ));
    let big = vec![PolicyFile { path: "z.yaml".into(), bytes: vec![0; 3 << 20] }];
    let bomb = build("p", "v", &big, &Limits::default()).unwrap();
    assert!(matches!(read(&bomb.bytes, &tiny(|l| l.max_ratio = 2)), Err(TarballError::Bomb { ratio: 2 })));
}

#[test]
fn collect_names_files_walks_dirs_and_refuses_links() {
    let dir = tempfile::tempdir().unwrap();
    let gov = dir.path().join("governance");
    fs::create_dir_all(gov.join("sub")).unwrap();
    fs::write(gov.join("llm_policy.yaml"), "a").unwrap();
    fs::write(gov.join("sub/b.yaml"), "b").unwrap();
    let one = collect(&[gov.join("llm_policy.yaml")], &Limits::default()).unwrap();
    assert_eq!(one[0].path, "llm_policy.yaml");
    let all = collect(std::slice::from_ref(&gov), &Limits::default()).unwrap();
    let paths: Vec<_> = all.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["llm_policy.yaml", "sub/b.yaml"]);
    assert!(matches!(
        collect(&[gov.join("llm_policy.yaml"), gov.clone()], &Limits::default()),
        Err(TarballError::DuplicatePath { .. })
    ));
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/passwd", gov.join("link.yaml")).unwrap();
        assert!(matches!(collect(&[gov], &Limits::default()), Err(TarballError::NotRegular { .. })));
    }
}

#[test]
fn unpack_writes_files_into_a_new_dir_only() {
    let built = build("p", "PD-1.0.0", &files(), &Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v1");
    let m = unpack(&built.bytes, &out, &Limits::default()).unwrap();
    assert_eq!(m.version, "PD-1.0.0");
    assert_eq!(fs::read(out.join("extra/roles.yaml")).unwrap(), b"roles: []\n");
    assert!(matches!(unpack(&built.bytes, &out, &Limits::default()), Err(TarballError::DirNotEmpty(_))));
}

/// A tar member written block by block: `size` goes in the ustar header, `data` follows.
fn member(name: &str, kind: tar::EntryType, size: u64, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar).unwrap();
    gz.finish().unwrap()
}

/// The package of the PAX-size report: `llm_policy.yaml`'s ustar size says 10 bytes, a PAX
/// `size` record says 30, and the data holds 30. GNU tar, bsdtar and Python's tarfile honour
/// the PAX record.
fn pax_size_package() -> (Vec<u8>, Vec<u8>) {
    let content = b"allow: everything, forever!!\n\n".to_vec();
    assert_eq!(content.len(), 30);
    let manifest = manifest_for(&[("llm_policy.yaml", &content[..10])]);
    let mut t = member(MANIFEST, tar::EntryType::Regular, manifest.len() as u64, &manifest);
    t.extend(member("PaxHeaders/llm_policy.yaml", tar::EntryType::XHeader, 11, b"11 size=30\n"));
    t.extend(member("llm_policy.yaml", tar::EntryType::Regular, 10, &content));
    t.extend([0u8; 1024]);
    (gzip(&t), content)
}

#[test]
fn a_pax_size_record_is_refused_rather_than_read_as_the_ustar_size() {
    // Regression: pd read the first 10 bytes (the ustar size) while `tar` extracted 30.
    let (tgz, content) = pax_size_package();
    let err = read(&tgz, &Limits::default()).unwrap_err();
    assert!(matches!(&err, TarballError::Extension { what } if what == "PAX extended header"), "{err}");
    // The disagreement is real: GNU tar, where present, extracts the 30 bytes.
    if let Ok(mut child) = std::process::Command::new("tar")
        .args(["-xzOf", "-", "llm_policy.yaml"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        child.stdin.take().unwrap().write_all(&tgz).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.stdout, content, "tar honours the PAX size");
    }
}

#[test]
fn every_extension_header_is_refused() {
    use tar::EntryType as T;
    let manifest = manifest_for(&[("a.yaml", b"a: 1\n")]);
    for (kind, what) in [
        (T::XGlobalHeader, "PAX global header"),
        (T::GNULongName, "GNU long name header"),
        (T::GNULongLink, "GNU long link header"),
        (T::GNUSparse, "GNU sparse file"),
    ] {
        let mut t = member(MANIFEST, T::Regular, manifest.len() as u64, &manifest);
        t.extend(member("x", kind, 4, b"long"));
        t.extend(member("a.yaml", T::Regular, 5, b"a: 1\n"));
        t.extend([0u8; 1024]);
        let err = read(&gzip(&t), &Limits::default()).unwrap_err();
        assert!(matches!(&err, TarballError::Extension { what: w } if w == what), "{what}: {err}");
    }
    // A GNU-format header (magic "ustar  ") is not ustar either.
    let mut gnu = tar::Header::new_gnu();
    gnu.set_path(MANIFEST).unwrap();
    gnu.set_size(manifest.len() as u64);
    gnu.set_cksum();
    let mut t = gnu.as_bytes().to_vec();
    t.extend_from_slice(&manifest);
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    assert!(matches!(read(&gzip(&t), &Limits::default()), Err(TarballError::Extension { .. })));
}

#[test]
fn nothing_may_follow_the_archive() {
    let good = build("llm_policy", "PD-1.0.0", &files(), &Limits::default()).unwrap().bytes;
    assert!(read(&good, &Limits::default()).is_ok());
    // A second gzip member: `tar xzf` (through gzip) reads it, a single-member reader does not.
    let mut two = good.clone();
    two.extend(gzip(&member("evil.yaml", tar::EntryType::Regular, 3, b"x:1")));
    assert!(matches!(read(&two, &Limits::default()), Err(TarballError::Malformed(m)) if m.contains("gzip")));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(read(&trailing, &Limits::default()).is_err());
    // Data after tar's end marker, inside the gzip stream.
    let inner = {
        let mut d = flate2::read::GzDecoder::new(&good[..]);
        let mut v = Vec::new();
        d.read_to_end(&mut v).unwrap();
        v
    };
    let mut after = inner.clone();
    after.extend(member("late.yaml", tar::EntryType::Regular, 3, b"x:1"));
    let err = read(&gzip(&after), &Limits::default()).unwrap_err();
    assert!(matches!(&err, TarballError::Malformed(m) if m.contains("after the end")), "{err}");
}
