//! TLS for Kafka listeners: a rustls server configuration from PEM files (TLS 1.2 and 1.3),
//! the certificate reloaded when its files change (rotation without a restart), and optional
//! client certificates verified against a CA bundle (mTLS) whose subject becomes the principal;
//! a changed CA bundle applies to the next handshakes, also without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::error::TlsError;
use crate::principal::Principal;

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for and verified if given (a client without one is `User:ANONYMOUS`).
    Requested,
    /// Required: a client without a valid certificate cannot connect.
    Required,
}

/// How a client certificate's subject becomes a principal.
#[derive(Debug, Clone, PartialEq)]
pub enum PrincipalFrom {
    /// The whole distinguished name in RFC 2253 form (`CN=alice,O=Example`), Kafka's default.
    Dn,
    /// The common name alone (`alice`).
    Cn,
    /// Kafka's `ssl.principal.mapping.rules`, applied to the RFC 2253 name.
    Rules(Arc<crate::mapping::PrincipalRules>),
}

/// The files and choices of one TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether clients present certificates.
    pub client_auth: ClientAuth,
    /// How a client certificate names its principal.
    pub principal_from: PrincipalFrom,
}

#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("tls lock").0.clone())
    }
}

/// A TLS server for one or more listeners.
#[derive(Clone)]
pub struct TlsServer {
    /// The configuration new handshakes use, and the client CA bundle's modification time it
    /// was built from (a changed bundle builds a new configuration).
    config: Arc<RwLock<(Arc<rustls::ServerConfig>, Option<SystemTime>)>>,
    certs: Arc<Reloading>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.certs.files)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_err(what: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn modified(files: &TlsFiles) -> Option<SystemTime> {
    Some(mtime(&files.cert)?.max(mtime(&files.key)?))
}

fn ca_modified(files: &TlsFiles) -> Option<SystemTime> {
    match files.client_auth {
        ClientAuth::None => None,
        _ => files.client_ca.as_deref().and_then(mtime),
    }
}

fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err("certificate", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("certificate", &files.cert, e))?;
    if certs.is_empty() {
        return Err(file_err("certificate", &files.cert, "no CERTIFICATE in it"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err("key", &files.key, e))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            file_err(
                "key",
                &files.key,
                format!("does not fit the certificate: {e}"),
            )
        })
}

/// A server configuration: the protocol versions, the client-certificate verifier (built from
/// the CA bundle as it is now) and the reloading certificate.
fn server_config(
    files: &TlsFiles,
    certs: Arc<Reloading>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.client_ca, files.client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => {
            return Err(TlsError::Config(
                "client certificates are asked for but no client_ca bundle is set".into(),
            ))
        }
        (Some(ca), auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err("client CA", ca, e))? {
                let c = c.map_err(|e| file_err("client CA", ca, e))?;
                roots.add(c).map_err(|e| file_err("client CA", ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_err("client CA", ca, "no CERTIFICATE in it"));
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if auth == ClientAuth::Requested {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(certs)))
}

impl TlsServer {
    /// Loads the files and builds the server configuration.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = modified(&files);
        let ca_stamp = ca_modified(&files);
        let key = load_key(&files)?;
        let certs = Arc::new(Reloading {
            current: RwLock::new((key, stamp)),
            files: files.clone(),
        });
        let config = server_config(&files, certs.clone())?;
        Ok(Self {
            config: Arc::new(RwLock::new((config, ca_stamp))),
            certs,
        })
    }

    /// Runs the server side of a handshake; the stream and the principal of the client's
    /// certificate, if it presented one.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Option<Principal>)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = self.config.read().expect("tls lock").0.clone();
        let stream = tokio_rustls::TlsAcceptor::from(config).accept(io).await?;
        let principal = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            None => None,
            // A verified certificate always names someone: never User:ANONYMOUS.
            Some(leaf) => Some(self.principal(leaf).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the client certificate ({}) names no principal: its subject is empty or no tls.principal_rules rule matches it",
                        subject_dn(leaf).map(|dn| dn.join(",")).unwrap_or_default()
                    ),
                )
            })?),
        };
        Ok((stream, principal))
    }

    /// Reloads the certificate and key, and the client CA bundle, if their files changed;
    /// `Ok(true)` if anything was reloaded. Files that do not load leave the current ones in
    /// use (and are reported). Connections already open keep what they were verified with.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let files = &self.certs.files;
        let mut reloaded = false;
        let stamp = modified(files);
        if stamp != self.certs.current.read().expect("tls lock").1 {
            let key = load_key(files)?;
            *self.certs.current.write().expect("tls lock") = (key, stamp);
            reloaded = true;
        }
        let ca_stamp = ca_modified(files);
        if ca_stamp != self.config.read().expect("tls lock").1 {
            let config = server_config(files, self.certs.clone())?;
            *self.config.write().expect("tls lock") = (config, ca_stamp);
            reloaded = true;
        }
        Ok(reloaded)
    }

    /// The principal of a verified client certificate.
    /// (In `cn` mode a subject without a common name is named by its whole DN, as Kafka's
    /// default rule does; a certificate with an empty subject has no principal.)
    pub fn principal(&self, leaf: &[u8]) -> Option<Principal> {
        let dn = subject_dn(leaf)?;
        if dn.is_empty() {
            return None;
        }
        let cn = dn
            .iter()
            .find_map(|rdn| rdn.strip_prefix("CN="))
            .map(|cn| cn.replace("\\,", ","));
        match (&self.certs.files.principal_from, cn) {
            (PrincipalFrom::Rules(rules), _) => rules.apply(&dn.join(",")).map(Principal::user),
            (PrincipalFrom::Cn, Some(cn)) if !cn.is_empty() => Some(Principal::user(cn)),
            _ => Some(Principal::user(dn.join(","))),
        }
    }
}

/// One DER element: `(tag, contents, rest)`.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, b) = b.split_first()?;
    let (len, b) = if l0 < 0x80 {
        (l0 as usize, b)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        (
            b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize),
            &b[n..],
        )
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

fn oid_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        _ => {
            // Dotted form (RFC 2253 for attribute types without a short name).
            let mut parts = Vec::new();
            if let Some((&first, rest)) = oid.split_first() {
                parts.push((first / 40) as u64);
                parts.push((first % 40) as u64);
                let mut v = 0u64;
                for &x in rest {
                    v = (v << 7) | (x & 0x7f) as u64;
                    if x & 0x80 == 0 {
                        parts.push(v);
                        v = 0;
                    }
                }
            }
            parts
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(".")
        }
    }
}

fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || (i == 0 && c == '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject of a DER certificate as RFC 2253 RDNs, most specific first (`["CN=alice",
/// "O=Example"]`); `None` if the certificate does not parse.
pub fn subject_dn(cert: &[u8]) -> Option<Vec<String>> {
    let (0x30, cert, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    let (0x02, _, rest) = tlv(rest)? else {
        return None;
    }; // serial
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    }; // signature algorithm
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    }; // issuer
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    }; // validity
    let (0x30, mut subject, _) = tlv(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !subject.is_empty() {
        let (0x31, mut set, r) = tlv(subject)? else {
            return None;
        };
        subject = r;
        let mut atvs = Vec::new();
        while !set.is_empty() {
            let (0x30, atv, r) = tlv(set)? else {
                return None;
            };
            set = r;
            let (0x06, oid, v) = tlv(atv)? else {
                return None;
            };
            let (tag, value, _) = tlv(v)?;
            let value = match tag {
                0x1e => {
                    let units: Vec<u16> = value
                        .chunks(2)
                        .map(|c| Some(u16::from_be_bytes([c[0], *c.get(1)?])))
                        .collect::<Option<_>>()?;
                    String::from_utf16(&units).ok()?
                }
                _ => String::from_utf8_lossy(value).into_owned(),
            };
            atvs.push(format!("{}={}", oid_name(oid), escape_rdn_value(&value)));
        }
        rdns.push(atvs.join("+"));
    }
    rdns.reverse();
    Some(rdns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_garbage_certificates_have_no_subject() {
        assert_eq!(subject_dn(&[]), None);
        assert_eq!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_dn(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        assert_eq!(subject_dn(&[0x04, 0x00]), None);
    }

    #[test]
    fn rdn_values_are_escaped_as_rfc2253_says() {
        assert_eq!(escape_rdn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rdn_value("#x"), "\\#x");
        assert_eq!(
            oid_name(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
    }
}
