//! API keys at run time. A configuration holds keys only as SHA-256 digests: the file loader
//! and the operator turn each `secretRef` into the digest of the Secret's value
//! ([`SecretValues::digest`]) before anything else sees the configuration, so neither a
//! rendered ConfigMap nor a loaded configuration ever holds a key. A request's key is
//! hashed the same way and looked up in the [`KeyRing`].
//!
//! Why a hash-map lookup is safe here: the map is keyed by the digest of what the client
//! sent, so its timing depends on that digest, which tells an attacker nothing about any
//! stored key (finding a key from its digest is a SHA-256 preimage). The entry found is
//! still confirmed with a constant-time comparison.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tally_crds::{KeyScope, KeySource, MIN_KEY_CHARS, RateLimit, SecretKeyRef};

/// A key's SHA-256 digest.
pub type KeyDigest = [u8; 32];

/// The SHA-256 digest of an API key, as sent in a request.
pub fn digest_of(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// The lower-case hex form of a digest, as `sha256` fields hold it.
pub fn to_hex(digest: &KeyDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<KeyDigest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a key cannot be used. The messages name the Secret and key, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("Secret {secret:?} with key {key:?} does not exist")]
    Missing { secret: String, key: String },
    #[error("the value of key {key:?} of Secret {secret:?} is not UTF-8 text")]
    NotText { secret: String, key: String },
    #[error(
        "the value of key {key:?} of Secret {secret:?} is shorter than {MIN_KEY_CHARS} characters"
    )]
    TooShort { secret: String, key: String },
    #[error("sha256 {0:?} is not 64 lower-case hex digits")]
    BadDigest(String),
}

/// The values of the Secrets a configuration refers to: Secret name → key → bytes, and a
/// directory of mounted Secrets (`<dir>/<secret>/<key>`, as Kubernetes mounts them) for the
/// ones not given as documents.
#[derive(Clone, Default)]
pub struct SecretValues {
    documents: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only, never a value.
        f.debug_struct("SecretValues")
            .field("documents", &self.documents.keys().collect::<Vec<_>>())
            .field("dir", &self.dir)
            .finish()
    }
}

impl SecretValues {
    /// Adds (or replaces) a Secret's values.
    pub fn insert(&mut self, name: String, values: BTreeMap<String, Vec<u8>>) {
        self.documents.insert(name, values);
    }

    /// Looks up Secrets not given as documents in `dir` (`<dir>/<secret>/<key>`).
    pub fn with_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.dir = dir;
        self
    }

    /// The value of `key` of Secret `name`: from a document, else from the directory.
    pub fn value(&self, name: &str, key: &str) -> Option<Vec<u8>> {
        if let Some(value) = self.documents.get(name).and_then(|keys| keys.get(key)) {
            return Some(value.clone());
        }
        let safe = |part: &str| !part.is_empty() && !part.starts_with('.') && !part.contains('/');
        let dir = self.dir.as_ref().filter(|_| safe(name) && safe(key))?;
        std::fs::read(dir.join(name).join(key)).ok()
    }

    /// The value of a Secret key, or why not.
    pub fn require(&self, reference: &SecretKeyRef) -> Result<Vec<u8>, KeyProblem> {
        self.value(&reference.name, &reference.key)
            .ok_or_else(|| KeyProblem::Missing {
                secret: reference.name.clone(),
                key: reference.key.clone(),
            })
    }

    /// The value of a Secret key as text without surrounding white space.
    pub fn text(&self, reference: &SecretKeyRef) -> Result<String, KeyProblem> {
        let value = self.require(reference)?;
        String::from_utf8(value)
            .map(|text| text.trim().to_owned())
            .map_err(|_| KeyProblem::NotText {
                secret: reference.name.clone(),
                key: reference.key.clone(),
            })
    }

    /// Adds a Secret: its `data`, with `stringData` over it as the API server merges them.
    /// A Secret without a name is refused.
    pub fn add(&mut self, secret: k8s_openapi::api::core::v1::Secret) -> Result<(), &'static str> {
        let name = secret
            .metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or("a Secret needs metadata.name")?;
        let mut values: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            values.insert(k, v.into_bytes());
        }
        self.insert(name, values);
        Ok(())
    }

    /// The digest of the key `source` names: its `sha256` as given, or the digest of the
    /// Secret's value without surrounding white space.
    pub fn digest(&self, source: &KeySource) -> Result<KeyDigest, KeyProblem> {
        if let Some(hex) = &source.sha256 {
            return from_hex(hex).ok_or_else(|| KeyProblem::BadDigest(hex.clone()));
        }
        let Some(reference) = &source.secret_ref else {
            return Err(KeyProblem::BadDigest(String::new()));
        };
        let text = self.text(reference)?;
        if text.chars().count() < MIN_KEY_CHARS {
            return Err(KeyProblem::TooShort {
                secret: reference.name.clone(),
                key: reference.key.clone(),
            });
        }
        Ok(digest_of(&text))
    }

    /// Gives `source` by its digest only, the form a configuration keeps, and returns the
    /// digest.
    pub fn resolve(&self, source: &mut KeySource) -> Result<KeyDigest, KeyProblem> {
        let digest = self.digest(source)?;
        *source = KeySource {
            secret_ref: None,
            sha256: Some(to_hex(&digest)),
        };
        Ok(digest)
    }
}

/// Whose key it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A key of one site, with its scopes.
    Site {
        site_id: String,
        ingest: bool,
        read: bool,
    },
    /// An admin read key of the pipeline: reads every site, writes none.
    Admin,
}

/// What a key may do, and its own rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub holder: Holder,
    pub rate_limit: Option<RateLimit>,
    digest: KeyDigest,
}

impl Grant {
    /// The key's digest, which identifies it (a per-key rate limiter, say) without being it.
    pub fn digest(&self) -> &KeyDigest {
        &self.digest
    }

    /// The site the key belongs to; `None` for an admin key.
    pub fn site_id(&self) -> Option<&str> {
        match &self.holder {
            Holder::Site { site_id, .. } => Some(site_id),
            Holder::Admin => None,
        }
    }

    /// Whether the key may post events for `site_id`.
    pub fn may_ingest(&self, site_id: &str) -> bool {
        matches!(&self.holder, Holder::Site { site_id: own, ingest: true, .. } if own == site_id)
    }

    /// Whether the key may read `site_id`'s figures.
    pub fn may_read(&self, site_id: &str) -> bool {
        match &self.holder {
            Holder::Site {
                site_id: own, read, ..
            } => *read && own == site_id,
            Holder::Admin => true,
        }
    }

    /// Whether the key has `scope` at all (for any site).
    pub fn has_scope(&self, scope: KeyScope) -> bool {
        match (&self.holder, scope) {
            (Holder::Site { ingest, .. }, KeyScope::Ingest) => *ingest,
            (Holder::Site { read, .. }, KeyScope::Read) => *read,
            (Holder::Admin, KeyScope::Read) => true,
            (Holder::Admin, KeyScope::Ingest) => false,
        }
    }
}

/// Every key of a configuration, by digest.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    grants: HashMap<KeyDigest, Grant>,
}

/// Two holders were given the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    pub first: String,
    pub second: String,
}

impl KeyRing {
    /// Adds a key; refuses one already held (`holder_name` names the holder in the error).
    pub fn add(
        &mut self,
        digest: KeyDigest,
        holder: Holder,
        rate_limit: Option<RateLimit>,
    ) -> Result<(), SharedKey> {
        let name = |h: &Holder| match h {
            Holder::Site { site_id, .. } => format!("site {site_id:?}"),
            Holder::Admin => "the pipeline's adminKeys".to_owned(),
        };
        if let Some(held) = self.grants.get(&digest) {
            return Err(SharedKey {
                first: name(&held.holder),
                second: name(&holder),
            });
        }
        self.grants.insert(
            digest,
            Grant {
                holder,
                rate_limit,
                digest,
            },
        );
        Ok(())
    }

    /// The grant of the key a request presented, if it is one of the configuration's.
    pub fn find(&self, presented: &str) -> Option<&Grant> {
        let digest = digest_of(presented);
        self.grants
            .get(&digest)
            .filter(|grant| bool::from(grant.digest.ct_eq(&digest)))
    }

    /// Every key's grant.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> SecretValues {
        let mut values = SecretValues::default();
        values.insert(
            "keys".into(),
            BTreeMap::from([
                ("good".into(), b"  abcdefghijklmnop\n".to_vec()),
                ("short".into(), b"abc".to_vec()),
                ("binary".into(), vec![0xff; 20]),
            ]),
        );
        values
    }

    fn from_secret(key: &str) -> KeySource {
        KeySource {
            secret_ref: Some(SecretKeyRef {
                name: "keys".into(),
                key: key.into(),
            }),
            sha256: None,
        }
    }

    #[test]
    fn a_secret_value_is_trimmed_and_hashed() {
        let digest = secrets().digest(&from_secret("good")).unwrap();
        assert_eq!(digest, digest_of("abcdefghijklmnop"));
        let mut resolved = from_secret("good");
        assert_eq!(secrets().resolve(&mut resolved).unwrap(), digest);
        assert_eq!(resolved.secret_ref, None);
        assert_eq!(from_hex(resolved.sha256.as_deref().unwrap()), Some(digest));
    }

    #[test]
    fn problems_name_the_secret_and_never_the_value() {
        for (key, expected) in [
            ("short", "shorter than 16 characters"),
            ("binary", "not UTF-8"),
            ("none", "does not exist"),
        ] {
            let message = secrets().digest(&from_secret(key)).unwrap_err().to_string();
            assert!(
                message.contains(expected) && message.contains("\"keys\""),
                "{message}"
            );
            assert!(!message.contains("abc"), "{message}");
        }
        let bad = KeySource {
            secret_ref: None,
            sha256: Some("XYZ".into()),
        };
        assert!(matches!(
            secrets().digest(&bad),
            Err(KeyProblem::BadDigest(_))
        ));
    }

    #[test]
    fn the_ring_finds_keys_and_refuses_a_shared_one() {
        let mut ring = KeyRing::default();
        let site = |id: &str| Holder::Site {
            site_id: id.into(),
            ingest: true,
            read: false,
        };
        ring.add(digest_of("key-of-shop-0123456"), site("shop"), None)
            .unwrap();
        ring.add(digest_of("admin-key-0123456789"), Holder::Admin, None)
            .unwrap();
        let shared = ring
            .add(digest_of("key-of-shop-0123456"), site("blog"), None)
            .unwrap_err();
        assert_eq!(shared.first, "site \"shop\"");
        let shop = ring.find("key-of-shop-0123456").unwrap();
        assert!(shop.may_ingest("shop") && !shop.may_ingest("blog") && !shop.may_read("shop"));
        let admin = ring.find("admin-key-0123456789").unwrap();
        assert!(admin.may_read("shop") && admin.may_read("blog") && !admin.may_ingest("shop"));
        assert!(ring.find("key-of-shop-012345").is_none());
        assert!(ring.find("").is_none());
    }
}
