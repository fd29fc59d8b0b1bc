//! TLS for the tests: a throw-away CA with server and client certificates (rcgen), and a TLS
//! front for the emulator that terminates TLS (optionally demanding a client certificate) and
//! pipes the bytes to the emulator's plain TCP port.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// PEM files: the CA, a client certificate, and a server certificate.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// The server side in DER, for a rustls server.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

/// A CA, a server certificate naming `dns_name`, and a client certificate, written as PEM
/// files under `dir`.
pub fn make_certs(dir: &Path, dns_name: &str) -> (TlsFiles, ServerIdentity) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issue = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = issue(dns_name);
    let (client_cert, client_key) = issue("nomad-relay.client");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
    };
    std::fs::write(&files.ca, ca_cert.pem()).unwrap();
    std::fs::write(&files.client_cert, client_cert.pem()).unwrap();
    std::fs::write(&files.client_key, client_key.serialize_pem()).unwrap();
    std::fs::write(&files.server_cert, server_cert.pem()).unwrap();
    std::fs::write(&files.server_key, server_key.serialize_pem()).unwrap();
    let identity = ServerIdentity {
        chain: vec![
            CertificateDer::from(server_cert.der().to_vec()),
            CertificateDer::from(ca_cert.der().to_vec()),
        ],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ca: CertificateDer::from(ca_cert.der().to_vec()),
    };
    (files, identity)
}

/// Starts a TLS front for `backend` whose certificate names only `dns_name`; returns its
/// address and the files a client needs. With `require_client_cert`, clients must present a
/// certificate signed by the same CA.
pub async fn tls_front(
    backend: SocketAddr,
    dns_name: &str,
    require_client_cert: bool,
    dir: &Path,
) -> (SocketAddr, TlsFiles) {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let (files, identity) = make_certs(dir, dns_name);
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca).unwrap();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if require_client_cert {
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(identity.chain, identity.key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, files)
}
