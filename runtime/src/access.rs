//! The API key of an HTTP request, and the rules every read endpoint applies, written once.
//! A request carries its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`; the key
//! is looked up in the configuration's [`KeyRing`] and never logged or echoed.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tally_contracts::access::{Grant, KeyRing};

/// Why a request's key does not let it do what it asks. The messages never hold the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    MissingKey(String),
    #[error("{0}")]
    InvalidKey(&'static str),
    #[error("this API key may not {action} site {site_id:?}")]
    OtherSite {
        action: &'static str,
        site_id: String,
    },
    #[error("this API key lacks the {0:?} scope")]
    MissingScope(&'static str),
    #[error("this needs an admin key of the pipeline; a site's key describes one site only")]
    NotAdmin,
}

impl Denied {
    /// The status code and the stable machine-readable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingKey(_) => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            Self::InvalidKey(_) => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            Self::OtherSite { .. } => (StatusCode::FORBIDDEN, "forbidden_site"),
            Self::MissingScope(_) | Self::NotAdmin => (StatusCode::FORBIDDEN, "insufficient_scope"),
        }
    }

    /// A read of `site_id` without a key.
    pub fn no_read_key(site_id: &str) -> Self {
        Self::MissingKey(format!(
            "reading site {site_id:?} needs one of its read keys or an admin key, as Authorization: Bearer <key> or X-API-Key: <key>"
        ))
    }

    /// A post of events for `site_id` without a key.
    pub fn no_ingest_key(site_id: &str) -> Self {
        Self::MissingKey(format!(
            "site {site_id:?} takes events only with one of its ingest keys, as Authorization: Bearer <key> or X-API-Key: <key>"
        ))
    }
}

/// Adds `WWW-Authenticate: Bearer` to a 401, as RFC 9110 asks.
pub fn with_challenge(mut response: Response) -> Response {
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tally\""),
        );
    }
    response
}

/// The key a request presents, if any: `Authorization: Bearer <key>`, else `X-API-Key`.
/// Another `Authorization` scheme, or an empty key, is refused rather than ignored.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, Denied> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| Denied::InvalidKey("the Authorization header is not text"))?;
        let (scheme, key) = text.trim().split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denied::InvalidKey(
                "the Authorization header must be Bearer <key>",
            ));
        }
        return non_empty(key.trim()).map(Some);
    }
    match headers.get("x-api-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map_err(|_| Denied::InvalidKey("the X-API-Key header is not text"))
            .and_then(|key| non_empty(key.trim()))
            .map(Some),
    }
}

fn non_empty(key: &str) -> Result<&str, Denied> {
    if key.is_empty() {
        Err(Denied::InvalidKey("the API key is empty"))
    } else {
        Ok(key)
    }
}

/// The grant of the request's key: `None` without a key, an error for a key that is not
/// one of the configuration's.
pub fn grant_of<'a>(keys: &'a KeyRing, headers: &HeaderMap) -> Result<Option<&'a Grant>, Denied> {
    presented_key(headers)?
        .map(|key| find_key(keys, key))
        .transpose()
}

/// The grant of `key`, or a refusal when it is not one of the configuration's.
pub fn find_key<'a>(keys: &'a KeyRing, key: &str) -> Result<&'a Grant, Denied> {
    keys.find(key)
        .ok_or(Denied::InvalidKey("the API key is not valid"))
}

/// The rule of every read endpoint: a `read` key of `site_id`, or an admin key of the
/// pipeline. Checked before anything else of the request, so that a caller without a key
/// learns nothing, not even whether the site exists.
pub fn authorize_read(keys: &KeyRing, headers: &HeaderMap, site_id: &str) -> Result<(), Denied> {
    let grant = grant_of(keys, headers)?.ok_or_else(|| Denied::no_read_key(site_id))?;
    if grant.may_read(site_id) {
        Ok(())
    } else if grant.site_id() == Some(site_id) {
        Err(Denied::MissingScope("read"))
    } else {
        Err(Denied::OtherSite {
            action: "read",
            site_id: site_id.to_owned(),
        })
    }
}

/// The rule of what describes or changes the whole pipeline: an admin key.
pub fn authorize_admin(keys: &KeyRing, headers: &HeaderMap) -> Result<(), Denied> {
    let grant = grant_of(keys, headers)?.ok_or_else(|| {
        Denied::MissingKey(
            "this needs an admin key of the pipeline, as Authorization: Bearer <key> or X-API-Key: <key>"
                .into(),
        )
    })?;
    match grant.holder {
        tally_contracts::access::Holder::Admin => Ok(()),
        tally_contracts::access::Holder::Site { .. } => Err(Denied::NotAdmin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_contracts::access::{Holder, digest_of};

    const SHOP_READ: &str = "shop-read-key-0123456789";
    const SHOP_INGEST: &str = "shop-ingest-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789";

    fn ring() -> KeyRing {
        let mut ring = KeyRing::default();
        let site = |ingest, read| Holder::Site {
            site_id: "shop".into(),
            ingest,
            read,
        };
        ring.add(digest_of(SHOP_READ), site(false, true), None)
            .unwrap();
        ring.add(digest_of(SHOP_INGEST), site(true, false), None)
            .unwrap();
        ring.add(digest_of(ADMIN), Holder::Admin, None).unwrap();
        ring
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_key_comes_from_either_header() {
        let bearer = format!("Bearer {SHOP_READ}");
        assert_eq!(
            presented_key(&headers(&[("authorization", &bearer)])),
            Ok(Some(SHOP_READ))
        );
        assert_eq!(
            presented_key(&headers(&[(
                "authorization",
                &format!("bearer  {SHOP_READ} ")
            )])),
            Ok(Some(SHOP_READ))
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", SHOP_READ)])),
            Ok(Some(SHOP_READ))
        );
        assert_eq!(presented_key(&HeaderMap::new()), Ok(None));
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   "] {
            assert!(
                matches!(
                    presented_key(&headers(&[("authorization", bad)])),
                    Err(Denied::InvalidKey(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_need_a_read_key_of_the_site_or_an_admin_key() {
        let read = |pairs: &[(&'static str, &str)], site| {
            authorize_read(&ring(), &headers(pairs), site).map_err(|d| d.status_and_code().1)
        };
        assert_eq!(read(&[("x-api-key", SHOP_READ)], "shop"), Ok(()));
        assert_eq!(read(&[("x-api-key", ADMIN)], "blog"), Ok(()));
        assert_eq!(read(&[], "shop"), Err("missing_api_key"));
        assert_eq!(
            read(&[("x-api-key", "garbage")], "shop"),
            Err("invalid_api_key")
        );
        assert_eq!(
            read(&[("x-api-key", SHOP_READ)], "blog"),
            Err("forbidden_site")
        );
        assert_eq!(
            read(&[("x-api-key", SHOP_INGEST)], "shop"),
            Err("insufficient_scope")
        );
        let denied = authorize_read(&ring(), &headers(&[("x-api-key", SHOP_READ)]), "blog");
        let message = denied.unwrap_err().to_string();
        assert!(message.contains("\"blog\"") && !message.contains(SHOP_READ));
    }
}
