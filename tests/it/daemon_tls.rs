//! TLS and password authentication against a real mosquitto with certificates made here.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::broker::{free_port, Mosquitto, Observer};
use crate::common::daemon::{config_text, images_at};
use crate::common::process::Daemon;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Writes ca.pem (and another, unrelated other-ca.pem), server.pem and server.key.
fn make_certificates(dir: &Path) {
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let issuer = ca("iscamd test CA");
    std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), ca("someone else").pem()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// A config whose password file holds `password` with permissions `mode`.
fn config(dir: &Path, tls_port: u16, ca: &str, password: &str, mode: u32) -> std::path::PathBuf {
    let pw = dir.join(format!("password-{password}"));
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    let path = dir.join(format!("iscamd-{password}-{ca}.toml"));
    let extra = format!(
        "username = \"camera\"\npassword_file = \"{}\"\nca = \"{}\"\n\
         [device]\nid = \"secure\"\n[cam]\ninterval = \"0s\"\n",
        pw.display(),
        dir.join(ca).display(),
    );
    std::fs::write(&path, config_text(tls_port, &images_at(2), &extra)).unwrap();
    path
}

#[test]
fn tls_with_password_accepts_the_right_credentials_and_refuses_wrong_ones() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let passwd = certs.path().join("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["camera", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        free_port(),
        &format!(
            "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            certs.path().join("ca.pem").display(),
            certs.path().join("server.pem").display(),
            certs.path().join("server.key").display(),
        ),
    );
    let observer = Observer::connect(broker.port, "iscamd/secure/#");

    // Right CA and password: connected, publishing.
    let good = Daemon::start(
        &config(certs.path(), tls_port, "ca.pem", "s3cret", 0o600),
        certs.path(),
    );
    observer.wait_for(
        "iscamd/secure/prediction",
        Duration::from_secs(30),
        "predictions over TLS",
        |m| !m.is_empty(),
    );
    assert!(!good.log_text().contains("readable by every user"));
    drop(good);

    // Wrong password: a clear error, retried with backoff, never an exit or a spin.
    let dir = tempfile::tempdir().unwrap();
    let mut wrong_password = Daemon::start(
        &config(certs.path(), tls_port, "ca.pem", "guess", 0o644),
        dir.path(),
    );
    // Wrong CA: the TLS handshake fails.
    let dir2 = tempfile::tempdir().unwrap();
    let mut wrong_ca = Daemon::start(
        &config(certs.path(), tls_port, "other-ca.pem", "s3cret", 0o600),
        dir2.path(),
    );
    std::thread::sleep(Duration::from_secs(8));
    // A password anyone on the machine can read is worth a warning.
    assert!(
        wrong_password
            .log_text()
            .contains("password-guess is readable by every user: chmod 600"),
        "{}",
        wrong_password.log_text()
    );
    for (daemon, expected) in [
        (&mut wrong_password, "authentication failed"),
        (&mut wrong_ca, "TLS failed"),
    ] {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "iscamd exited:\n{}",
            daemon.log_text()
        );
        let log = daemon.log_text();
        let attempts = log.lines().filter(|l| l.contains(expected)).count();
        println!("{expected}: {attempts} attempts in 8 s");
        assert!(
            (2..=8).contains(&attempts),
            "{attempts} attempts with {expected:?} in 8 s (backoff expected):\n{log}"
        );
        assert!(log.contains("retrying in"), "{log}");
        assert!(daemon.terminate().success());
    }
}
