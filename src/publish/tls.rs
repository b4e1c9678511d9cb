//! TLS material for the MQTT client, read and checked when the daemon starts: a garbage
//! certificate, key or CA file is a start-up error naming its key, not a connection that
//! fails and is retried for ever.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};
use crate::file::{read_capped, MAX_SMALL_FILE_BYTES};

/// A client config trusting the CA file's certificates, with the client certificate and
/// key when both are given.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "mqtt.ca")? {
        roots
            .add(cert)
            .map_err(|e| Error::input(ca, format!("mqtt.ca: unusable certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("mqtt TLS", e))?
        .with_root_certificates(roots);
    let Some((cert, key)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = certificates(cert, "mqtt.cert")?;
    builder
        .with_client_auth_cert(chain, private_key(key)?)
        .map_err(|e| Error::input(key, format!("mqtt.key does not fit mqtt.cert: {e}")))
}

/// Every certificate of a PEM file; none is an error.
fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_capped(path, key, MAX_SMALL_FILE_BYTES)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::input(path, format!("{key}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::input(
            path,
            format!("{key}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_capped(path, "mqtt.key", MAX_SMALL_FILE_BYTES)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::input(
            path,
            format!("mqtt.key: no PEM private key in the file ({e})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_files_are_refused_naming_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let e = client_config(&garbage, None).unwrap_err().to_string();
        assert!(e.contains("mqtt.ca: no PEM certificate"), "{e}");

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        client_config(&good, None).unwrap();
        let e = client_config(&good, Some((&garbage, &garbage)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.cert: no PEM certificate"), "{e}");
        let e = client_config(&good, Some((&good, &garbage)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.key: no PEM private key"), "{e}");

        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
        let e = client_config(&good, Some((&good, &other_key)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.key does not fit mqtt.cert"), "{e}");
    }
}
