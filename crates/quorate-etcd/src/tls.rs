//! TLS options for etcd-client (feature `tls`): CA, client identity and server name from
//! PEM files.

use crate::config::TlsConfig;
use crate::error::EtcdError;

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Config {
        problems: vec![format!("tls: cannot read the {what} {path:?}: {e}")],
    })
}

/// The etcd-client TLS options for `tls`.
pub fn options(tls: &TlsConfig) -> Result<etcd_client::TlsOptions, EtcdError> {
    let mut o = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_cert_pem {
        o = o.ca_certificate(etcd_client::Certificate::from_pem(read(
            ca,
            "CA certificate",
        )?));
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
        o = o.identity(etcd_client::Identity::from_pem(
            read(cert, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    if let Some(domain) = &tls.domain {
        o = o.domain_name(domain.clone());
    }
    Ok(o)
}
