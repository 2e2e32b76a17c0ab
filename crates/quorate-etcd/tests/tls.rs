//! TLS with client-certificate authentication against a real etcd (feature `tls`, on by
//! default). Certificates are made for the run with the `openssl` command.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, reason = "test")]

use quorate_coord_api::{Consistency, Coord, CoordError};
use quorate_etcd::EtcdCoord;
use quorate_testkit::etcd::{EtcdCluster, EtcdClusterConfig, make_test_certs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_test_certs(certs_dir.path()).unwrap();
    let mut config = EtcdClusterConfig::members(1);
    config.tls = Some(certs.clone());
    let cluster = EtcdCluster::start(config).await.unwrap();
    assert!(cluster.client_urls()[0].starts_with("https://"));

    let coord = cluster.coord(0).unwrap();
    coord.put("tls/k", b"v".to_vec(), None).await.unwrap();
    let got = coord.get("tls/k", Consistency::Linearizable).await.unwrap();
    assert_eq!(got.kv.unwrap().value, b"v");

    // Without a client certificate the server refuses the handshake: nothing is done.
    let mut no_cert = cluster.etcd_config(0);
    if let Some(tls) = no_cert.tls.as_mut() {
        tls.client_cert_pem = None;
        tls.client_key_pem = None;
    }
    no_cert.attempts_max = std::num::NonZeroU32::MIN;
    let refused = EtcdCoord::new(no_cert).unwrap();
    let e = refused.put("tls/k", b"w".to_vec(), None).await;
    assert!(
        matches!(
            e,
            Err(CoordError::Unavailable { .. } | CoordError::Timeout { .. })
        ),
        "{e:?}"
    );
    let got = coord.get("tls/k", Consistency::Linearizable).await.unwrap();
    assert_eq!(got.kv.unwrap().value, b"v");
}
