//! Mesh identities: a mesh CA, short-lived certificates that name one service as a SPIFFE id
//! (`spiffe://shopmesh/<env>/<service>` as the URI SAN), and the rustls configurations that
//! require them on both sides of every hop. Certificates are re-read from disk when their files
//! change, so a renewed certificate takes effect without dropping connections.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;

use crate::endpoint::is_valid_name;

/// The trust domain of every mesh identity.
pub const TRUST_DOMAIN: &str = "shopmesh";

/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

fn file_error(path: &Path, error: impl fmt::Display) -> IdentityError {
    IdentityError::File {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub env: String,
    pub service: String,
}

impl SpiffeId {
    pub fn new(env: &str, service: &str) -> Result<Self, IdentityError> {
        for (what, name) in [("environment", env), ("service", service)] {
            if !is_valid_name(name) {
                return Err(IdentityError::Invalid(format!(
                    "{what} {name:?}: use lowercase letters, digits and dashes"
                )));
            }
        }
        Ok(Self {
            env: env.to_owned(),
            service: service.to_owned(),
        })
    }

    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
        let mut parts = rest.strip_prefix('/')?.split('/');
        let (env, service) = (parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Self::new(env, service).ok()
    }

    /// The identity a certificate carries as its URI SAN; exactly one is allowed.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| IdentityError::Invalid(format!("unreadable certificate: {e}")))?;
        let names = parsed
            .subject_alternative_name()
            .map_err(|e| IdentityError::Invalid(format!("unreadable SAN: {e}")))?;
        let mut ids = names.into_iter().flat_map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
        });
        match (ids.next(), ids.next()) {
            (Some(uri), None) => Self::parse(uri).ok_or_else(|| {
                IdentityError::Invalid(format!("{uri:?} is not a shopmesh SPIFFE id"))
            }),
            (None, _) => Err(IdentityError::Invalid(
                "the certificate carries no SPIFFE id".into(),
            )),
            (Some(_), Some(_)) => Err(IdentityError::Invalid(
                "the certificate carries more than one URI".into(),
            )),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{TRUST_DOMAIN}/{}/{}", self.env, self.service)
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), IdentityError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| file_error(path, e))
}

fn replace(path: &Path, contents: &str, private: bool) -> Result<(), IdentityError> {
    // Write beside, then rename: a reader never sees half a file.
    let temporary = path.with_extension("pem.new");
    let _ = fs::remove_file(&temporary);
    write_new(&temporary, contents, private)?;
    fs::rename(&temporary, path).map_err(|e| file_error(path, e))
}

fn validity(lifetime: Duration) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    // Backdated a little: clocks across nodes are never exactly equal.
    let now = OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(lifetime)
        .map_err(|_| IdentityError::Invalid("lifetime too long".into()))?;
    Ok((now - time::Duration::minutes(5), now + lifetime))
}

/// Creates a mesh CA in `dir` (`ca.pem`, `ca-key.pem`). Refuses to overwrite an existing one:
/// replacing a CA invalidates every certificate it issued.
pub fn init_ca(dir: &Path, lifetime: Duration) -> Result<PathBuf, IdentityError> {
    fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(file_error(path, "exists; a mesh CA is created once"));
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "shopmesh mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(lifetime)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// A certificate and key issued by [`issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub id: SpiffeId,
    pub expires: SystemTime,
}

/// Issues a certificate for `id` signed by the CA in `ca_dir`, valid for `lifetime`, usable as
/// both TLS server and client. Writes `<out>/<service>[-<node>].pem` and `…-key.pem`, replacing
/// earlier ones atomically (renewal).
pub fn issue(
    ca_dir: &Path,
    id: &SpiffeId,
    node: Option<&str>,
    lifetime: Duration,
    out: &Path,
) -> Result<Issued, IdentityError> {
    let (ca_cert_path, ca_key_path) = (ca_dir.join(CA_CERT), ca_dir.join(CA_KEY));
    let ca_cert = fs::read_to_string(&ca_cert_path).map_err(|e| file_error(&ca_cert_path, e))?;
    let ca_key = fs::read_to_string(&ca_key_path).map_err(|e| file_error(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| file_error(&ca_key_path, e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(|e| file_error(&ca_cert_path, e))?;

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let subject = match node {
        Some(node) => {
            if !is_valid_name(node) {
                return Err(IdentityError::Invalid(format!(
                    "node {node:?}: use lowercase letters, digits and dashes"
                )));
            }
            format!("{} on {node}", id.service)
        }
        None => id.service.clone(),
    };
    params.distinguished_name.push(DnType::CommonName, subject);
    params.subject_alt_names = vec![SanType::URI(
        id.to_string()
            .try_into()
            .map_err(|e| IdentityError::Invalid(format!("{e}")))?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity(lifetime)?;
    (params.not_before, params.not_after) = (not_before, not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    fs::create_dir_all(out).map_err(|e| file_error(out, e))?;
    let stem = match node {
        Some(node) => format!("{}-{node}", id.service),
        None => id.service.clone(),
    };
    let (cert_path, key_path) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}-key.pem")),
    );
    // Key first: a reloader that sees the new certificate must find its key.
    replace(&key_path, &key.serialize_pem(), true)?;
    replace(&cert_path, &cert.pem(), false)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        id: id.clone(),
        expires: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(not_after.unix_timestamp()).unwrap_or(0)),
    })
}

/// The mesh CA's certificate: what every peer's chain must lead to.
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    roots: Arc<RootCertStore>,
    anchors: Arc<Vec<rustls_pki_types::TrustAnchor<'static>>>,
}

impl TrustAnchor {
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| file_error(path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(path, e))?;
        if certs.is_empty() {
            return Err(file_error(path, "no certificate in the file"));
        }
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        for cert in certs {
            anchors.push(
                webpki::anchor_from_trusted_cert(&cert)
                    .map_err(|e| file_error(path, format!("{e:?}")))?
                    .to_owned(),
            );
            roots.add(cert).map_err(|e| file_error(path, e))?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            anchors: Arc::new(anchors),
        })
    }
}

/// One service's certificate and key, re-read when the files change.
#[derive(Debug)]
pub struct ServiceKey {
    pub id: SpiffeId,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl ServiceKey {
    /// Loads the pair and checks that it names `service` in `env`.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        env: &str,
        service: &str,
    ) -> Result<Self, IdentityError> {
        let loaded = load_pair(cert_path, key_path)?;
        let id =
            SpiffeId::of_certificate(&loaded.key.cert[0]).map_err(|e| file_error(cert_path, e))?;
        if id.env != env || id.service != service {
            return Err(file_error(
                cert_path,
                format!("names {id}, expected {}", SpiffeId::new(env, service)?),
            ));
        }
        Ok(Self {
            id,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(loaded),
        })
    }

    pub fn certified(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }

    /// Re-reads the files if the certificate changed on disk. Returns whether it did; a pair that
    /// fails to load is reported and the old one kept.
    pub fn reload_if_changed(&self) -> Result<bool, IdentityError> {
        let modified = modified(&self.cert_path);
        if modified == self.read().modified {
            return Ok(false);
        }
        let loaded = load_pair(&self.cert_path, &self.key_path)?;
        let id = SpiffeId::of_certificate(&loaded.key.cert[0])
            .map_err(|e| file_error(&self.cert_path, e))?;
        if id != self.id {
            return Err(file_error(
                &self.cert_path,
                format!("now names {id}, expected {}; keeping the old one", self.id),
            ));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(true)
    }

    /// Time left before the certificate expires, and its whole lifetime.
    pub fn remaining(&self) -> (Duration, Duration) {
        let loaded = self.read();
        let left = loaded
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let lifetime = loaded
            .not_after
            .duration_since(loaded.not_before)
            .unwrap_or_default();
        (left, lifetime)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Loaded, IdentityError> {
    let modified = modified(cert_path);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_error(cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert_path, "no certificate in the file"));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| file_error(cert_path, format!("unreadable certificate: {e}")))?;
    let at = |seconds: i64| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    };
    let (not_before, not_after) = (
        at(parsed.validity().not_before.timestamp()),
        at(parsed.validity().not_after.timestamp()),
    );
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error(key_path, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(key_path, e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| file_error(key_path, format!("does not match the certificate: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        modified,
        not_before,
        not_after,
    })
}

/// The one crypto provider of the mesh (ring, as everywhere in shopmesh).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The inbound side: presents the certificate of the local service the caller named (SNI) and
/// requires a client certificate chained to the mesh CA. Which caller may call what is decided
/// after the handshake, from the identity in that certificate.
pub fn server_config(
    anchor: &TrustAnchor,
    keys: Vec<Arc<ServiceKey>>,
) -> Result<ServerConfig, IdentityError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(anchor.roots.clone(), provider())
        .build()
        .map_err(|e| IdentityError::Invalid(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(BySni(keys)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct BySni(Vec<Arc<ServiceKey>>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.0
            .iter()
            .find(|key| key.id.service == name)
            .map(|key| key.certified())
    }
}

/// The outbound side for calls made as `key`'s service: presents its certificate and accepts a
/// server only if its chain leads to the mesh CA and it names, in `env`, the service the call is
/// for (the TLS server name).
pub fn client_config(
    anchor: &TrustAnchor,
    key: Arc<ServiceKey>,
) -> Result<ClientConfig, IdentityError> {
    let env = key.id.env.clone();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            anchors: anchor.anchors.clone(),
            env,
            provider: provider(),
        }))
        .with_client_cert_resolver(Arc::new(ClientKey(key)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct ClientKey(Arc<ServiceKey>);

impl ResolvesClientCert for ClientKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a server's chain against the mesh CA and its SPIFFE id against the service asked for.
#[derive(Debug)]
struct MeshServerVerifier {
    anchors: Arc<Vec<rustls_pki_types::TrustAnchor<'static>>>,
    env: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(certificate_error)?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(certificate_error)?;
        let id = SpiffeId::of_certificate(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let expected = match server_name {
            ServerName::DnsName(name) => name.as_ref(),
            _ => "",
        };
        if id.env != self.env || id.service != expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn certificate_error(error: webpki::Error) -> rustls::Error {
    let kind = match error {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

/// The identity in a peer's verified certificate chain.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    SpiffeId::of_certificate(certs?.first()?).ok()
}
