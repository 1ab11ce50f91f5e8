//! Package versions: `PD-major.minor.patch`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A package version, shown and encoded as `PD-23.1.0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Version {
    /// Incompatible policy change.
    pub major: u32,
    /// New policy content (the default bump).
    pub minor: u32,
    /// A fix.
    pub patch: u32,
}

/// Which part of the version to raise.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bump {
    /// `x+1.0.0`
    Major,
    /// `x.y+1.0`
    Minor,
    /// `x.y.z+1`
    Patch,
}

impl Version {
    /// Builds a version.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version { major, minor, patch }
    }

    /// The version after this one; `None` on overflow.
    pub fn bump(self, bump: Bump) -> Option<Version> {
        Some(match bump {
            Bump::Major => Version::new(self.major.checked_add(1)?, 0, 0),
            Bump::Minor => Version::new(self.major, self.minor.checked_add(1)?, 0),
            Bump::Patch => Version::new(self.major, self.minor, self.patch.checked_add(1)?),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PD-{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A string that is not a version.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a version: write it as PD-23.1.0 (or 23.1.0)")]
pub struct ParseVersionError(String);

impl FromStr for Version {
    type Err = ParseVersionError;

    /// Accepts `PD-x.y.z` or `x.y.z`, decimal without leading zeros.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError(s.chars().take(40).collect());
        let body = s.strip_prefix("PD-").unwrap_or(s);
        let mut parts = body.split('.').map(|p| {
            let canonical =
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
            if canonical {
                p.parse::<u32>().ok()
            } else {
                None
            }
        });
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        Ok(Version::new(major, minor, patch))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // On the wire only the canonical `PD-` form is accepted, so one version has one encoding.
        if !s.starts_with("PD-") {
            return Err(serde::de::Error::custom(ParseVersionError(s)));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = [("PD-23.1.0", (23, 1, 0)), ("0.1.0", (0, 1, 0)), ("PD-1.20.300", (1, 20, 300))];
        for (s, (a, b, c)) in ok {
            assert_eq!(s.parse::<Version>().unwrap(), Version::new(a, b, c), "{s}");
        }
        for bad in ["", "PD-", "1.2", "1.2.3.4", "01.2.3", "1.-2.3", "v1.2.3", "1.2.3 ", "4294967296.0.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn bump_and_order() {
        let v = Version::new(23, 0, 4);
        assert_eq!(v.bump(Bump::Minor), Some(Version::new(23, 1, 0)));
        assert_eq!(v.bump(Bump::Major), Some(Version::new(24, 0, 0)));
        assert_eq!(v.bump(Bump::Patch), Some(Version::new(23, 0, 5)));
        assert!(Version::new(2, 0, 0) > Version::new(1, 99, 99));
        assert_eq!(Version::new(0, 0, u32::MAX).bump(Bump::Patch), None);
    }
}
