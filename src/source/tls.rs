//! Builds the rustls client configuration for `https://` Nomad addresses: CA file, CA
//! directory or the system's roots, an optional client certificate (mTLS), an optional server-name override
//! (Nomad's certificates name `server.<region>.nomad`, not the host), and skip-verify for
//! tests. Only HTTP/1.1 is offered, as Nomad's event stream speaks nothing else.

use crate::config::TlsConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// A TLS setting that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// Builds the client configuration.
pub fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS setup failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.skip_verify {
        Arc::new(AcceptAnyCertificate(provider.clone()))
    } else {
        let roots = Arc::new(root_store(tls)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("TLS setup failed: {e}")))?;
        match &tls.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    TlsError(format!("`nomad.tls.server_name`: `{name}` is not a valid DNS name"))
                })?;
                Arc::new(FixedServerName { inner: webpki, name })
            }
            None => webpki,
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| TlsError(format!("`nomad.tls.cert_file` {}: {e}", cert_file.display())))?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| TlsError(format!("`nomad.tls.key_file` {}: {e}", key_file.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError(format!(
                    "`nomad.tls.cert_file`/`key_file` do not form a usable client identity: {e}"
                ))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn root_store(tls: &TlsConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // go-rootcerts' order, as Nomad's CLI: the file, else the directory, else the system's.
    match (&tls.ca_file, &tls.ca_path) {
        (Some(path), _) => {
            let certs = pem_certificates(path, "nomad.tls.ca_file")?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError(format!(
                    "`nomad.tls.ca_file` {}: no usable certificate in it",
                    path.display()
                )));
            }
        }
        (None, Some(dir)) => {
            let mut files = Vec::new();
            files_under(dir, &mut files)?;
            if files.is_empty() {
                // go-rootcerts would make an empty pool, and every handshake would fail.
                return Err(TlsError(format!(
                    "`nomad.tls.ca_path` {}: no certificate in it; put the PEM CA certificates that signed Nomad's there",
                    dir.display()
                )));
            }
            for file in files {
                let (added, _) =
                    roots.add_parsable_certificates(pem_certificates(&file, "nomad.tls.ca_path")?);
                if added == 0 {
                    return Err(TlsError(format!(
                        "`nomad.tls.ca_path` {}: {} holds no usable certificate; every file in the directory must be a PEM CA certificate",
                        dir.display(),
                        file.display()
                    )));
                }
            }
        }
        (None, None) => {
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
        }
    }
    Ok(roots)
}

/// The certificates of a PEM file; `key` names the setting in errors.
fn pem_certificates(path: &std::path::Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("`{key}` {}: {e}", path.display())))
}

/// Every file under `path`, recursively, in name order; `path` itself if it is not a
/// directory. As go-rootcerts' `filepath.Walk`, symbolic links are not followed into
/// directories: a link to a file is read (hashed OpenSSL CA directories are made of them), a
/// link to a directory is a file that cannot be read, hence an error.
fn files_under(path: &std::path::Path, files: &mut Vec<std::path::PathBuf>) -> Result<(), TlsError> {
    let unreadable =
        |e: std::io::Error| TlsError(format!("`nomad.tls.ca_path` {}: cannot read it: {e}", path.display()));
    if !std::fs::symlink_metadata(path).map_err(unreadable)?.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)
        .map_err(unreadable)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort();
    for entry in entries {
        files_under(&entry, files)?;
    }
    Ok(())
}

/// Verifies the chain normally but against a configured name instead of the URL's host.
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `skip_verify = true`: checks signatures are well-formed, trusts any certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_ca_path(dir: &std::path::Path) -> TlsConfig {
        TlsConfig { ca_path: Some(dir.to_owned()), ..TlsConfig::default() }
    }

    #[test]
    fn a_ca_path_with_a_file_that_is_no_certificate_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README"), "not a certificate\n").unwrap();
        let error = client_config(&with_ca_path(dir.path())).unwrap_err().to_string();
        assert!(error.contains("`nomad.tls.ca_path`") && error.contains("README"), "{error}");
    }

    #[test]
    fn ca_file_wins_over_ca_path_as_in_nomads_cli() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let tls = TlsConfig {
            ca_file: Some(ca.clone()),
            ca_path: Some("/nonexistent/ca".into()),
            ..TlsConfig::default()
        };
        assert!(client_config(&tls).is_ok(), "ca_path is not read when ca_file is set");
        // A single file as ca_path is read, as filepath.Walk visits a file root.
        assert!(client_config(&with_ca_path(&ca)).is_ok());
        let empty = tempfile::tempdir().unwrap();
        let error = client_config(&with_ca_path(empty.path())).unwrap_err().to_string();
        assert!(error.contains("no certificate in it"), "{error}");
    }

    #[test]
    fn a_ca_path_that_does_not_exist_is_an_error_naming_it() {
        let error =
            client_config(&with_ca_path(std::path::Path::new("/nonexistent/ca"))).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca") && error.contains("cannot read it"), "{error}");
    }
}
