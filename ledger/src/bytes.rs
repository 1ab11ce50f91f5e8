//! Fixed-size byte strings: CBOR byte strings on the wire, lowercase hex for humans.

use std::fmt;

use serde::de::{Deserializer, Error as _, Visitor};
use serde::{Deserialize, Serialize, Serializer};

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                let mut digits = [0u8; 2 * $len];
                // Cannot fail: the buffer is exactly twice the bytes, and hex digits are ASCII.
                let _ = hex::encode_to_slice(self.0, &mut digits);
                String::from_utf8(digits.to_vec()).unwrap_or_default()
            }

            /// Parses exactly `2 * LEN` hex digits.
            pub fn from_hex(s: &str) -> Result<Self, ParseBytesError> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseBytesError {
                    what: stringify!($name),
                    expected_hex_digits: 2 * $len,
                    got: s.chars().take(80).collect(),
                })?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} bytes", $len)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        let arr: [u8; $len] = v
                            .try_into()
                            .map_err(|_| E::invalid_length(v.len(), &self))?;
                        Ok($name(arr))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_hex(v).map_err(E::custom)
                    }
                }
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    $name::from_hex(&s).map_err(D::Error::custom)
                } else {
                    d.deserialize_bytes(V)
                }
            }
        }
    };
}

fixed_bytes!(
    /// A 32-byte digest (BLAKE3 for ids and store keys, SHA-256 where named so).
    Hash,
    32
);
fixed_bytes!(
    /// An Ed25519 public key.
    PublicKey,
    32
);
fixed_bytes!(
    /// An Ed25519 signature.
    Signature,
    64
);

impl Default for Hash {
    fn default() -> Self {
        Hash::ZERO
    }
}

impl Hash {
    /// The all-zero hash: `prev` of the genesis entry.
    pub const ZERO: Hash = Hash([0; 32]);

    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

/// A hex string that is not a valid fixed-size byte string.
#[derive(Debug, thiserror::Error)]
#[error("not a valid {what}: expected {expected_hex_digits} hex digits, got {got:?}")]
pub struct ParseBytesError {
    what: &'static str,
    expected_hex_digits: usize,
    got: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_bytes_in_cbor_and_hex_in_json() {
        let h = Hash::of(b"x");
        let mut cbor = Vec::new();
        ciborium::into_writer(&h, &mut cbor).unwrap();
        assert_eq!(cbor[0], 0x58, "a CBOR byte string of 32 bytes");
        assert_eq!(cbor.len(), 34);
        let back: Hash = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, h);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(Hash::from_hex("abcd").is_err());
        let mut cbor = Vec::new();
        ciborium::into_writer(&serde_bytes::Bytes::new(&[1u8; 31]), &mut cbor).unwrap();
        assert!(ciborium::from_reader::<Hash, _>(&cbor[..]).is_err());
    }
}
