//! Ed25519 signing and verification with pd's domain separation.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::bytes::{PublicKey, Signature};

/// An Ed25519 secret key. Never printed: `Debug` shows only the public half.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Builds a key from 32 secret seed bytes (the caller draws them from the OS).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The 32 secret seed bytes, for writing to an owner-only key file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || digest`.
    pub fn sign(&self, domain: &[u8], digest: &[u8; 32]) -> Signature {
        self.sign_raw(&message(domain, digest))
    }

    /// Signs `message` as it is (for formats that fix their own message, like signed notes).
    pub fn sign_raw(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

/// The signed message: a domain tag, then a 32-byte digest.
pub fn message(domain: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 32);
    m.extend_from_slice(domain);
    m.extend_from_slice(digest);
    m
}

/// Verifies one signature (strict: rejects small-order keys and malleable signatures).
pub fn verify(key: &PublicKey, domain: &[u8], digest: &[u8; 32], sig: &Signature) -> bool {
    verify_raw(key, &message(domain, digest), sig)
}

/// Verifies one signature over `message` as it is (strict, like [`verify`]).
pub fn verify_raw(key: &PublicKey, message: &[u8], sig: &Signature) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig.0)).is_ok()
}

/// One signature to check in a batch.
pub struct SignedMessage {
    /// Who signed.
    pub key: PublicKey,
    /// The full signed message (domain tag and digest).
    pub message: Vec<u8>,
    /// The signature.
    pub sig: Signature,
}

/// Verifies many signatures at once; on failure returns the index of the first bad one.
pub fn verify_batch(items: &[SignedMessage]) -> Result<(), usize> {
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        keys.push(VerifyingKey::from_bytes(&item.key.0).map_err(|_| i)?);
    }
    let msgs: Vec<&[u8]> = items.iter().map(|i| i.message.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> =
        items.iter().map(|i| ed25519_dalek::Signature::from_bytes(&i.sig.0)).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return Ok(());
    }
    // The batch only says "some signature is bad": find the first one.
    let first_bad = items.iter().zip(&keys).position(|(item, vk)| {
        let sig = ed25519_dalek::Signature::from_bytes(&item.sig.0);
        vk.verify_strict(&item.message, &sig).is_err()
    });
    Err(first_bad.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = SecretKey::from_seed([7; 32]);
        let d = [1u8; 32];
        let s = k.sign(b"pd/entry/v1", &d);
        assert!(verify(&k.public(), b"pd/entry/v1", &d, &s));
        assert!(!verify(&k.public(), b"pd/head/v1", &d, &s));
        assert!(!verify(&k.public(), b"pd/entry/v1", &[2u8; 32], &s));
    }

    #[test]
    fn batch_names_the_first_bad_signature() {
        let k = SecretKey::from_seed([9; 32]);
        let mut items: Vec<SignedMessage> = (0..10u8)
            .map(|i| SignedMessage {
                key: k.public(),
                message: message(b"t", &[i; 32]),
                sig: k.sign(b"t", &[i; 32]),
            })
            .collect();
        assert_eq!(verify_batch(&items), Ok(()));
        items[6].sig.0[3] ^= 1;
        items[8].sig.0[3] ^= 1;
        assert_eq!(verify_batch(&items), Err(6));
    }
}
