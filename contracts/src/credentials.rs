//! The credentials of the servers a pipeline uses — the NATS login and TLS material, the
//! ClickHouse user, password and TLS material — read from the Secrets the pipeline names
//! (documents beside the resources, or Secrets mounted under `--secrets-dir`), and the
//! NATS connection options and ClickHouse client made from them. The values live in memory
//! only: they are not part of the resources, so no rendered configuration holds them, and
//! `Debug` never shows them.

use std::sync::Arc;

use async_nats::ConnectOptions;
use async_nats::rustls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tally_crds::{AnalyticsPipelineSpec, TlsSpec};

use crate::access::{KeyProblem, SecretValues};

/// How the services log in to the pipeline's servers.
#[derive(Clone, Default)]
pub struct Credentials {
    pub nats: NatsCredentials,
    pub clickhouse: ClickHouseCredentials,
}

impl Credentials {
    /// A digest of every credential: changes when one does, holds none.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let clickhouse = &self.clickhouse;
        let mut hash = Sha256::new();
        hash.update(self.nats.fingerprint().as_bytes());
        for part in [&clickhouse.user, &clickhouse.password] {
            hash.update(b"\0");
            hash.update(part.as_deref().unwrap_or_default().as_bytes());
        }
        TlsMaterial::hash_into(clickhouse.tls.as_ref(), &mut hash);
        crate::access::to_hex(&hash.finalize().into())
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// A NATS login and TLS material.
#[derive(Clone, Default)]
pub struct NatsCredentials {
    pub login: Option<NatsLogin>,
    pub tls: Option<TlsMaterial>,
}

/// One way of logging in to NATS.
#[derive(Clone)]
pub enum NatsLogin {
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// The text of a `.creds` file.
    Credentials(String),
    /// An NKey seed.
    NKey(String),
}

/// The ClickHouse user, password and TLS material.
#[derive(Clone, Default)]
pub struct ClickHouseCredentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsMaterial>,
}

/// PEM-encoded TLS material.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    /// The client certificate and its key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    /// Adds `tls` (if any) to a fingerprint's hash.
    fn hash_into(tls: Option<&Self>, hash: &mut sha2::Sha256) {
        use sha2::Digest;
        if let Some(tls) = tls {
            hash.update(b"\0tls\0");
            hash.update(tls.ca.as_deref().unwrap_or_default());
            if let Some((cert, key)) = &tls.client {
                hash.update(cert);
                hash.update(key);
            }
        }
    }
}

/// Reads the credentials `spec` names from `secrets`; the error names the field and the
/// Secret, never a value.
pub fn resolve(
    spec: &AnalyticsPipelineSpec,
    secrets: &SecretValues,
) -> Result<Credentials, String> {
    fn at(field: &'static str) -> impl Fn(KeyProblem) -> String {
        move |problem| format!("spec.{field}: {problem}")
    }
    let nats_login = match &spec.nats.auth {
        None => None,
        Some(auth) => Some(
            match (
                &auth.user,
                &auth.password_secret_ref,
                &auth.token_secret_ref,
                &auth.credentials_secret_ref,
                &auth.nkey_secret_ref,
            ) {
                (Some(user), Some(password), None, None, None) => NatsLogin::UserPassword {
                    user: user.clone(),
                    password: secrets
                        .text(password)
                        .map_err(at("nats.auth.passwordSecretRef"))?,
                },
                (None, None, Some(token), None, None) => NatsLogin::Token(
                    secrets
                        .text(token)
                        .map_err(at("nats.auth.tokenSecretRef"))?,
                ),
                (None, None, None, Some(creds), None) => NatsLogin::Credentials(
                    secrets
                        .text(creds)
                        .map_err(at("nats.auth.credentialsSecretRef"))?,
                ),
                (None, None, None, None, Some(seed)) => {
                    NatsLogin::NKey(secrets.text(seed).map_err(at("nats.auth.nkeySecretRef"))?)
                }
                _ => {
                    return Err("spec.nats.auth: give exactly one of passwordSecretRef (with user), tokenSecretRef, credentialsSecretRef and nkeySecretRef".into());
                }
            },
        ),
    };
    let clickhouse = &spec.clickhouse;
    Ok(Credentials {
        nats: NatsCredentials {
            login: nats_login,
            tls: tls_material(spec.nats.tls.as_ref(), secrets, "nats.tls")?,
        },
        clickhouse: ClickHouseCredentials {
            user: clickhouse.user.clone(),
            password: clickhouse
                .password_secret_ref
                .as_ref()
                .map(|r| secrets.text(r))
                .transpose()
                .map_err(at("clickhouse.passwordSecretRef"))?,
            tls: tls_material(clickhouse.tls.as_ref(), secrets, "clickhouse.tls")?,
        },
    })
}

fn tls_material(
    spec: Option<&TlsSpec>,
    secrets: &SecretValues,
    field: &str,
) -> Result<Option<TlsMaterial>, String> {
    let Some(spec) = spec else { return Ok(None) };
    let read = |r: &Option<tally_crds::SecretKeyRef>, name: &str| {
        r.as_ref()
            .map(|r| secrets.require(r))
            .transpose()
            .map_err(|problem| format!("spec.{field}.{name}: {problem}"))
    };
    let ca = read(&spec.ca_secret_ref, "caSecretRef")?;
    let client = match (
        read(&spec.cert_secret_ref, "certSecretRef")?,
        read(&spec.key_secret_ref, "keySecretRef")?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(format!(
                "spec.{field}: certSecretRef and keySecretRef go together"
            ));
        }
    };
    let material = TlsMaterial { ca, client };
    // Parse now, so a bad PEM is an error at load, naming the field.
    rustls_config(&material).map_err(|e| format!("spec.{field}: {e}"))?;
    Ok(Some(material))
}

/// A rustls client configuration from PEM material: its CA bundle as the only roots (the
/// system's when it has none) and its client certificate.
pub fn rustls_config(material: &TlsMaterial) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &material.ca {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the CA bundle is not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err("the CA bundle holds no certificate".into());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as the system does.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &material.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("the client key is not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))
        }
    }
}

impl NatsCredentials {
    /// A digest of the login and TLS material: tells two logins apart without holding
    /// either.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        match &self.login {
            None => hash.update(b"none"),
            Some(NatsLogin::UserPassword { user, password }) => {
                hash.update(b"user\0");
                hash.update(user.as_bytes());
                hash.update(b"\0");
                hash.update(password.as_bytes());
            }
            Some(NatsLogin::Token(token)) => {
                hash.update(b"token\0");
                hash.update(token.as_bytes());
            }
            Some(NatsLogin::Credentials(creds)) => {
                hash.update(b"creds\0");
                hash.update(creds.as_bytes());
            }
            Some(NatsLogin::NKey(seed)) => {
                hash.update(b"nkey\0");
                hash.update(seed.as_bytes());
            }
        }
        TlsMaterial::hash_into(self.tls.as_ref(), &mut hash);
        crate::access::to_hex(&hash.finalize().into())
    }

    /// Connection options with this login and TLS.
    pub fn connect_options(&self) -> Result<ConnectOptions, String> {
        let options = match &self.login {
            None => ConnectOptions::new(),
            Some(NatsLogin::UserPassword { user, password }) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Some(NatsLogin::Token(token)) => ConnectOptions::with_token(token.clone()),
            Some(NatsLogin::Credentials(creds)) => ConnectOptions::with_credentials(creds)
                .map_err(|e| format!("spec.nats.auth.credentialsSecretRef: {e}"))?,
            Some(NatsLogin::NKey(seed)) => ConnectOptions::with_nkey(seed.clone()),
        };
        Ok(match &self.tls {
            None => options,
            Some(material) => options
                .tls_client_config(rustls_config(material)?)
                .require_tls(true),
        })
    }
}

/// The ClickHouse client of a pipeline: its `spec.clickhouse.url`, user and password, and
/// for `https://` its TLS material (the system's roots without a CA bundle).
#[cfg(feature = "clickhouse")]
pub fn clickhouse_client(config: &crate::RuntimeConfig) -> Result<clickhouse::Client, String> {
    use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
    use hyper_util::rt::TokioExecutor;

    let url = &config.pipeline.spec.clickhouse.url;
    let credentials = &config.credentials.clickhouse;
    let client = if credentials.tls.is_some() || url.starts_with("https://") {
        let material = credentials.tls.clone().unwrap_or_default();
        let mut http = HttpConnector::new();
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls_config(&material)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // As the crate's own client: ClickHouse closes idle connections after 3 s.
        let hyper = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(https);
        clickhouse::Client::with_http_client(hyper)
    } else {
        clickhouse::Client::default()
    };
    let mut client = client.with_url(url);
    if let Some(user) = &credentials.user {
        client = client.with_user(user);
    }
    if let Some(password) = &credentials.password {
        client = client.with_password(password);
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(yaml: &str) -> AnalyticsPipelineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn secrets() -> SecretValues {
        let mut values = SecretValues::default();
        values.insert(
            "servers".into(),
            BTreeMap::from([
                ("nats".to_owned(), b"nats-password\n".to_vec()),
                ("clickhouse".to_owned(), b"ch-password".to_vec()),
                ("ca".to_owned(), b"not a certificate".to_vec()),
            ]),
        );
        values
    }

    #[test]
    fn logins_come_from_the_secrets() {
        let spec = spec(
            "nats: {auth: {user: tally, passwordSecretRef: {name: servers, key: nats}}}\n\
             clickhouse: {user: writer, passwordSecretRef: {name: servers, key: clickhouse}}\n",
        );
        let credentials = resolve(&spec, &secrets()).unwrap();
        assert!(matches!(
            credentials.nats.login,
            Some(NatsLogin::UserPassword { ref user, ref password }) if user == "tally" && password == "nats-password"
        ));
        assert_eq!(
            credentials.clickhouse.password.as_deref(),
            Some("ch-password")
        );
        assert_eq!(format!("{credentials:?}"), "Credentials(..)");
        assert!(credentials.nats.connect_options().is_ok());
    }

    #[test]
    fn problems_name_the_field_and_never_a_value() {
        let missing = spec("nats: {auth: {tokenSecretRef: {name: servers, key: token}}}\n");
        assert_eq!(
            resolve(&missing, &secrets()).unwrap_err(),
            "spec.nats.auth.tokenSecretRef: Secret \"servers\" with key \"token\" does not exist"
        );
        let two = spec(
            "nats: {auth: {tokenSecretRef: {name: servers, key: nats}, nkeySecretRef: {name: servers, key: nats}}}\n",
        );
        assert!(
            resolve(&two, &secrets())
                .unwrap_err()
                .contains("exactly one")
        );
        let bad_ca = spec("clickhouse: {tls: {caSecretRef: {name: servers, key: ca}}}\n");
        let message = resolve(&bad_ca, &secrets()).unwrap_err();
        assert!(
            message.starts_with("spec.clickhouse.tls: the CA bundle"),
            "{message}"
        );
        assert!(!message.contains("not a certificate"), "{message}");
    }
}
