//! The servers' credentials on real servers: a `nats-server` that asks for TLS with client
//! certificates (a CA and certificates made for the test with `openssl`), and the collector
//! taking events through it with the CA bundle, certificate and key from `v1` `Secret`
//! documents beside the resources; the same server refuses a client without a certificate
//! and one that trusts another CA. ClickHouse behind a TLS front that asks for client
//! certificates (the engine of `chdb-core` serves plain HTTP only; a load balancer does this
//! in front of a ClickHouse cluster): the pipeline's client, the processor and the query
//! service reach it through TLS, and the same refusals hold. The logins of the other tests'
//! servers (a NATS user and a ClickHouse user with passwords) are the harness's default
//! (`tally_e2e::pipeline_yaml`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tally_contracts::RuntimeConfig;
use tally_e2e::{Process, Stack, free_port};

/// Makes a CA and, signed by it, a server certificate for 127.0.0.1 and a client
/// certificate, as PEM files in `dir` (`<name>.crt`, `<name>.key`).
fn make_certificates(dir: &Path, ca: &str) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{ca}.key");
    let ca_crt = format!("{ca}.crt");
    let subject = format!("/CN={ca}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", &ca_key, "-out", &ca_crt, "-days", "1", "-subj", &subject,
    ]);
    run(&args)?;
    for (name, extension) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), extension)?;
        let subject = format!("/CN={name}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        run(&args)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(())
}

/// The pipeline at a TLS NATS on `port`, with its TLS material from a Secret document.
fn resources(
    dir: &Path,
    port: u16,
    ca: &str,
    with_client_certificate: bool,
) -> anyhow::Result<RuntimeConfig> {
    let pem = |name: &str| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(dir.join(name))?;
        Ok(text.lines().map(|l| format!("    {l}\n")).collect())
    };
    let client = if with_client_certificate {
        "\n      certSecretRef: {name: nats-tls, key: tls.crt}\n      keySecretRef: {name: nats-tls, key: tls.key}"
    } else {
        ""
    };
    let yaml = format!(
        "apiVersion: tally.dev/v1alpha1
kind: AnalyticsPipeline
metadata: {{name: tls}}
spec:
  nats:
    url: nats://127.0.0.1:{port}
    tls:
      caSecretRef: {{name: nats-tls, key: ca.crt}}{client}
---
apiVersion: v1
kind: Secret
metadata: {{name: nats-tls}}
stringData:
  ca.crt: |
{ca_pem}  tls.crt: |
{crt}  tls.key: |
{key}---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata: {{name: shop}}
spec: {{pipelineRef: {{name: tls}}, siteId: shop}}
",
        ca_pem = pem(&format!("{ca}.crt"))?,
        crt = pem("client.crt")?,
        key = pem("client.key")?,
    );
    RuntimeConfig::parse("tls test", &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn the_collector_publishes_through_nats_with_tls_and_a_client_certificate()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tally-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    make_certificates(&dir, "ca")?;
    // Another CA, which did not sign the server's certificate.
    let other = dir.join("other");
    std::fs::create_dir_all(&other)?;
    make_certificates(&other, "other")?;

    let port = free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let mut nats = Process::spawn(
        "nats-tls",
        Command::new(tally_e2e::env_path("TALLY_NATS_SERVER")?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("nats"))
            .args(["--tls", "--tlsverify"])
            .args([
                "--tlscert",
                &path("server.crt"),
                "--tlskey",
                &path("server.key"),
            ])
            .args(["--tlscacert", &path("ca.crt")]),
        dir.join("nats.log"),
    )?;

    // The pipeline's own credentials connect, and JetStream answers through them.
    let config = resources(&dir, port, "ca", true)?;
    let client = tally_e2e::eventually("a TLS connection to NATS", Duration::from_secs(30), || {
        let options = config.credentials.nats.connect_options();
        async move {
            options
                .ok()?
                .connect(format!("127.0.0.1:{port}"))
                .await
                .ok()
        }
    })
    .await?;
    let js = async_nats::jetstream::new(client);
    tally_contracts::stream::ensure_stream(&js, &config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Refused: no client certificate; a CA that did not sign the server's certificate.
    for (what, config) in [
        (
            "without a client certificate",
            resources(&dir, port, "ca", false)?,
        ),
        (
            "trusting another CA",
            resources(&other, port, "other", true)?,
        ),
    ] {
        let options = config
            .credentials
            .nats
            .connect_options()
            .map_err(|e| anyhow::anyhow!(e))?
            .connection_timeout(Duration::from_secs(2));
        // With TLS 1.3 the server refuses a client's certificate after the client's side of
        // the handshake is done: what counts is whether JetStream ever answers.
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let client = options.connect(format!("127.0.0.1:{port}")).await.ok()?;
            async_nats::jetstream::new(client)
                .query_account()
                .await
                .ok()
        })
        .await
        .ok()
        .flatten();
        assert!(answered.is_none(), "JetStream answered a client {what}");
    }

    // The collector of that configuration takes events into the stream. The rendered text
    // names the Secret only; its keys are files under --secrets-dir, as the operator mounts
    // them.
    let config_path = dir.join("pipeline.yaml");
    let rendered = config.to_yaml();
    assert!(
        !rendered.contains("BEGIN"),
        "no PEM in the rendered configuration"
    );
    std::fs::write(&config_path, rendered)?;
    let secrets = dir.join("secrets").join("nats-tls");
    std::fs::create_dir_all(&secrets)?;
    for (key, file) in [
        ("ca.crt", "ca.crt"),
        ("tls.crt", "client.crt"),
        ("tls.key", "client.key"),
    ] {
        std::fs::copy(dir.join(file), secrets.join(key))?;
    }
    let collector_port = free_port();
    let mut collector = Process::spawn(
        "collector-tls",
        Command::new(Stack::binary("tally-collector")?)
            .args(["--config", config_path.to_str().unwrap()])
            .args(["--secrets-dir", dir.join("secrets").to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{collector_port}")]),
        dir.join("collector.log"),
    )?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{collector_port}/v1/events");
    let body = json!({"site_id": "shop", "event_type": "page_view", "path": "/tls"});
    let status = tally_e2e::eventually(
        "the collector to take an event over TLS",
        Duration::from_secs(30),
        || async {
            let status = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .ok()?
                .status()
                .as_u16();
            (status == 202).then_some(status)
        },
    )
    .await?;
    assert_eq!(status, 202);
    let mut stream = js.get_stream(config.stream_name()).await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    collector.stop();
    nats.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A TLS front for ClickHouse's HTTP port, as a load balancer in front of a ClickHouse
/// cluster terminates TLS (the ClickHouse engine of `chdb-core` serves plain HTTP only): it
/// presents the server certificate, asks for a client certificate signed by the CA, and
/// forwards each connection to `backend`.
async fn tls_front(dir: &Path, backend: u16) -> anyhow::Result<u16> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()?;
    let chain =
        CertificateDer::pem_file_iter(dir.join("server.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(port)
}

#[tokio::test]
async fn clickhouse_is_reached_over_tls_with_a_client_certificate() -> anyhow::Result<()> {
    let mut stack = Stack::start_servers(tally_e2e::Options::default()).await?;
    let dir = stack.dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    make_certificates(&dir, "ca")?;
    let other = dir.join("other");
    std::fs::create_dir_all(&other)?;
    make_certificates(&other, "other")?;
    let port = tls_front(&dir, stack.clickhouse_port).await?;

    // The test pipeline pointed at the TLS front, with the CA bundle and the client
    // certificate from Secret files under the stack's secrets directory.
    let secrets = stack.dir.join("secrets").join("clickhouse-tls");
    std::fs::create_dir_all(&secrets)?;
    let pipeline = |ca_file: &Path, with_client: bool| -> anyhow::Result<RuntimeConfig> {
        std::fs::copy(ca_file, secrets.join("ca.crt"))?;
        std::fs::copy(dir.join("client.crt"), secrets.join("tls.crt"))?;
        std::fs::copy(dir.join("client.key"), secrets.join("tls.key"))?;
        let client = if with_client {
            "\n      certSecretRef: {name: clickhouse-tls, key: tls.crt}\n      keySecretRef: {name: clickhouse-tls, key: tls.key}"
        } else {
            ""
        };
        let yaml = std::fs::read_to_string(stack.dir.join("pipeline.yaml"))?.replacen(
            &format!("url: http://127.0.0.1:{}", stack.clickhouse_port),
            &format!(
                "url: https://127.0.0.1:{port}\n    tls:\n      caSecretRef: {{name: clickhouse-tls, key: ca.crt}}{client}"
            ),
            1,
        );
        anyhow::ensure!(
            yaml.contains("https://"),
            "the test pipeline names its ClickHouse URL"
        );
        let path = stack.dir.join("tls-pipeline.yaml");
        std::fs::write(&path, yaml)?;
        RuntimeConfig::load_with_secrets(&path, Some(&stack.dir.join("secrets")))
            .map_err(|e| anyhow::anyhow!("{e}"))
    };

    let good = pipeline(&dir.join("ca.crt"), true)?;
    let client =
        tally_contracts::credentials::clickhouse_client(&good).map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(
        client
            .query("SELECT toUInt8(41 + 1)")
            .fetch_one::<u8>()
            .await?,
        42
    );
    for (what, config) in [
        (
            "without a client certificate",
            pipeline(&dir.join("ca.crt"), false)?,
        ),
        (
            "trusting another CA",
            pipeline(&other.join("other.crt"), true)?,
        ),
    ] {
        let client = tally_contracts::credentials::clickhouse_client(&config)
            .map_err(|e| anyhow::anyhow!(e))?;
        assert!(
            client.query("SELECT 1").execute().await.is_err(),
            "ClickHouse answered {what}"
        );
    }

    // The processor and the query service of that configuration (its Secrets as files under
    // the stack's secrets directory, as the operator mounts them) work through it.
    pipeline(&dir.join("ca.crt"), true)?;
    stack.config = stack.dir.join("tls-pipeline.yaml");
    stack.start_processor(&[]).await?;
    stack.start_query().await?;
    let (status, stats) = stack.stats("site_id=shop").await?;
    assert_eq!(status, 200, "{stats}");
    Ok(())
}
