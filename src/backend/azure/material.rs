//! What was read from Key Vault becomes Secret data: pure functions, no IO.
//!
//! - certificates: the certificate's secret (base64 PKCS#12 or PEM) becomes `tls.crt` and
//!   `tls.key`, or one PEM bundle (`pfx` reads PKCS#12, `chain` orders the chain and
//!   checks it by signature);
//! - keys: the public part of a JWK becomes a `BEGIN PUBLIC KEY` PEM;
//! - multi-key-value secrets and the transforms of single values (`values`);
//! - what may go to a ConfigMap: public material only.
//!
//! No error message carries a value, a private key or a PFX: only structure (positions,
//! subjects of certificates, Secret keys, sizes).

use std::collections::BTreeMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::api::{AzureObjectType, ChainOrder};
use crate::backend::SecretValue;
use crate::error::{Error, Result};
use crate::sync::render::is_valid_key;

mod chain;
mod pfx;
mod values;

pub use chain::{MAX_CERTIFICATES, PrivateKey, not_after, order_chain};
pub use values::{apply_transforms, multi_key_value};

/// Content types of a certificate's secret (fact 19 of the Key Vault reference).
pub const PKCS12: &str = "application/x-pkcs12";
pub const PEM_FILE: &str = "application/x-pem-file";

/// One PEM block with LF line ends, as OpenSSL writes it.
fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

// ---------------------------------------------------------------------------------------
// Certificates

/// A Key Vault certificate's secret, decoded: its private key, absent when the key is not
/// exportable, and its certificates (DER) as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateMaterial {
    pub private_key: Option<PrivateKey>,
    pub certificates: Vec<Vec<u8>>,
}

/// Decodes a certificate's secret. `application/x-pkcs12` is standard base64 of a PKCS#12
/// with an empty password (3DES or PBES2 AES bags, SHA-1 or SHA-2 MAC);
/// `application/x-pem-file` is a PKCS#8 key (PKCS#1 and SEC1 keys are accepted and
/// converted) and certificates. Any other or no content type: PEM when the value holds a
/// PEM block, else PKCS#12. The chain is not checked here: see [`certificate`].
pub fn certificate_material(
    secret_value: &str,
    content_type: Option<&str>,
) -> Result<CertificateMaterial> {
    let is_pem = match content_type.map(str::trim) {
        Some(t) if t.eq_ignore_ascii_case(PKCS12) => false,
        Some(t) if t.eq_ignore_ascii_case(PEM_FILE) => true,
        _ => secret_value.contains("-----BEGIN"),
    };
    if is_pem {
        from_pem(secret_value)
    } else {
        from_pkcs12(secret_value)
    }
}

fn from_pkcs12(secret_value: &str) -> Result<CertificateMaterial> {
    let compact: String = secret_value
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(compact.as_bytes()).map_err(|_| {
        Error::InvalidData("the certificate's PKCS#12 value is not standard base64".into())
    })?;
    let contents = pfx::read(&der)?;
    if contents.keys.len() > 1 {
        return Err(Error::InvalidData(format!(
            "the PKCS#12 holds {} private keys; a Key Vault certificate has one",
            contents.keys.len()
        )));
    }
    let private_key = match contents.keys.first() {
        Some(pkcs8) => Some(PrivateKey::from_pkcs8(pkcs8)?),
        None => None,
    };
    Ok(CertificateMaterial {
        private_key,
        certificates: contents.certificates,
    })
}

fn from_pem(secret_value: &str) -> Result<CertificateMaterial> {
    let blocks = pem::parse_many(secret_value).map_err(|_| {
        Error::InvalidData("the certificate's PEM value has a malformed PEM block".into())
    })?;
    if blocks.is_empty() {
        return Err(Error::InvalidData(
            "the certificate's PEM value holds no PEM block".into(),
        ));
    }
    let mut private_key = None;
    let mut certificates = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let key = match block.tag() {
            "CERTIFICATE" => {
                certificates.push(block.contents().to_vec());
                continue;
            }
            // OpenSSL writes the curve before a SEC1 key; the key names it again.
            "EC PARAMETERS" => continue,
            _ if block.headers().get("Proc-Type").is_some() => {
                return Err(Error::InvalidData(format!(
                    "PEM block {} ({}) is encrypted; Key Vault's PEM keys are not",
                    i + 1,
                    block.tag()
                )));
            }
            "PRIVATE KEY" => PrivateKey::from_pkcs8(block.contents())?,
            "RSA PRIVATE KEY" => PrivateKey::from_pkcs1(block.contents())?,
            "EC PRIVATE KEY" => PrivateKey::from_sec1(block.contents())?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::InvalidData(format!(
                    "PEM block {} is an encrypted private key; Key Vault's PEM keys are not",
                    i + 1
                )));
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(Error::InvalidData(format!(
                    "PEM block {} is a {shown:?}, not a private key or a certificate",
                    i + 1
                )));
            }
        };
        if private_key.replace(key).is_some() {
            return Err(Error::InvalidData(
                "the certificate's PEM value holds more than one private key".into(),
            ));
        }
    }
    Ok(CertificateMaterial {
        private_key,
        certificates,
    })
}

/// A certificate ready to write: its key, and its chain checked and in output order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub private_key: Option<PrivateKey>,
    /// DER. With `chainOrder: ensureserverfirst`, the leaf then its issuers; without it,
    /// the order Key Vault stored (exact duplicates dropped). Both were checked alike.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's notAfter.
    pub not_after: Option<jiff::Timestamp>,
}

/// Decodes a certificate's secret ([`certificate_material`]) and checks its chain by
/// signature ([`order_chain`]) whatever `chain_order` says; `chain_order` only chooses
/// the order written.
pub fn certificate(
    secret_value: &str,
    content_type: Option<&str>,
    chain_order: Option<ChainOrder>,
) -> Result<Certificate> {
    let material = certificate_material(secret_value, content_type)?;
    let ordered = order_chain(&material.certificates, material.private_key.as_ref())?;
    let not_after = ordered.first().and_then(|leaf| not_after(leaf));
    let chain = match chain_order {
        Some(ChainOrder::Ensureserverfirst) => ordered,
        None => chain::distinct(&material.certificates)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect(),
    };
    Ok(Certificate {
        private_key: material.private_key,
        chain,
        not_after,
    })
}

impl Certificate {
    /// The chain as concatenated `BEGIN CERTIFICATE` PEM blocks: the public part.
    pub fn certificates_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem_block("CERTIFICATE", der))
            .collect()
    }

    /// `tls.crt` (the chain) and `tls.key` (PKCS#8), for a `kubernetes.io/tls` Secret.
    /// A certificate whose key is not exportable cannot make one.
    pub fn tls_data(&self) -> Result<BTreeMap<String, SecretValue>> {
        let key = self.private_key.as_ref().ok_or_else(|| {
            Error::InvalidData(
                "Key Vault returned the certificate without its private key (the key is not \
                 exportable), and tls.key needs it: set output.secret.dataKey to write the \
                 certificates alone"
                    .into(),
            )
        })?;
        Ok(BTreeMap::from([
            (
                "tls.crt".to_string(),
                SecretValue::from(self.certificates_pem().as_str()),
            ),
            ("tls.key".to_string(), key.to_pem()),
        ]))
    }

    /// One PEM bundle for an Opaque Secret's `dataKey`, as akv2k8s writes it: the private
    /// key (if exportable), then the chain.
    pub fn pem_bundle(&self) -> SecretValue {
        let mut bundle = self
            .private_key
            .as_ref()
            .map(|k| k.to_pem().expose().to_vec())
            .unwrap_or_default();
        bundle.extend_from_slice(self.certificates_pem().as_bytes());
        SecretValue::new(bundle)
    }
}

// ---------------------------------------------------------------------------------------
// Keys

/// The public part of a Key Vault key (JWK: `kty` RSA or RSA-HSM with `n`, `e`; EC or
/// EC-HSM with `crv` P-256, P-384, P-521 or P-256K and `x`, `y`) as a SubjectPublicKeyInfo
/// PEM (`BEGIN PUBLIC KEY`), as `openssl pkey -pubout` writes it. EC points are checked to
/// be on their curve. Symmetric (`oct`) keys have no public part and are refused.
pub fn public_key_pem(jwk: &serde_json::Value) -> Result<String> {
    let member = |name: &str| -> Result<Vec<u8>> {
        let text = jwk
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::InvalidData(format!("the key's JWK has no {name:?} member")))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| {
                Error::InvalidData(format!("the key's JWK member {name:?} is not base64url"))
            })
    };
    let kty = jwk
        .get("kty")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::InvalidData("the key's JWK has no \"kty\" member".into()))?;
    let spki = match kty {
        "RSA" | "RSA-HSM" => {
            let (n, e) = (member("n")?, member("e")?);
            let components = RsaPublicKeyComponents {
                n: strip_leading_zeros(&n),
                e: strip_leading_zeros(&e),
            };
            components
                .as_der()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| {
                    Error::InvalidData("the key's JWK is not a valid RSA public key".into())
                })?
        }
        "EC" | "EC-HSM" => {
            let crv = jwk.get("crv").and_then(|v| v.as_str()).unwrap_or_default();
            let (algorithm, size): (&'static signature::EcdsaVerificationAlgorithm, usize) =
                match crv {
                    "P-256" => (&signature::ECDSA_P256_SHA256_ASN1, 32),
                    "P-384" => (&signature::ECDSA_P384_SHA384_ASN1, 48),
                    "P-521" => (&signature::ECDSA_P521_SHA512_ASN1, 66),
                    "P-256K" | "SECP256K1" => (&signature::ECDSA_P256K1_SHA256_ASN1, 32),
                    other => {
                        let shown: String = other.chars().take(20).collect();
                        return Err(Error::InvalidData(format!(
                            "the key's curve {shown:?} is not P-256, P-384, P-521 or P-256K"
                        )));
                    }
                };
            let mut point = vec![0x04];
            for name in ["x", "y"] {
                let coordinate = member(name)?;
                let coordinate = strip_leading_zeros(&coordinate);
                if coordinate.len() > size {
                    return Err(Error::InvalidData(format!(
                        "the key's {name:?} coordinate is longer than a {crv} coordinate"
                    )));
                }
                point.resize(point.len() + size - coordinate.len(), 0);
                point.extend_from_slice(coordinate);
            }
            let key = ParsedPublicKey::new(algorithm, &point).map_err(|_| {
                Error::InvalidData(format!("the key's JWK is not a point on {crv}"))
            })?;
            key.as_der()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| Error::InvalidData(format!("the key's JWK is not a point on {crv}")))?
        }
        "oct" | "oct-HSM" => {
            return Err(Error::InvalidData(
                "the key is symmetric (oct): it has no public part to write".into(),
            ));
        }
        other => {
            let shown: String = other.chars().take(20).collect();
            return Err(Error::InvalidData(format!(
                "the key type {shown:?} is not RSA or EC"
            )));
        }
    };
    Ok(pem_block("PUBLIC KEY", &spki))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

// ---------------------------------------------------------------------------------------
// ConfigMaps

const CONFIG_MAP_PUBLIC_ONLY: &str = "a ConfigMap is readable by anyone who can read \
    ConfigMaps: only a certificate's public part or a public key may go there";

/// An object as read from Key Vault, for [`config_map_data`].
#[derive(Clone, Copy, Debug)]
pub enum ReadObject<'a> {
    Secret,
    MultiKeyValueSecret,
    Certificate(&'a Certificate),
    /// The key's JWK.
    Key(&'a serde_json::Value),
}

/// Whether an object type may be written to a ConfigMap at all: certificates (their
/// public part) and keys (their public key) may; secrets may not. Pure, so it can refuse
/// a spec before anything is read.
pub fn config_map_allowed(object_type: AzureObjectType) -> Result<()> {
    match object_type {
        AzureObjectType::Certificate | AzureObjectType::Key => Ok(()),
        AzureObjectType::Secret | AzureObjectType::MultiKeyValueSecret => {
            Err(Error::InvalidSpec(CONFIG_MAP_PUBLIC_ONLY.into()))
        }
    }
}

/// The public-only data of a ConfigMap: a certificate's chain in PEM (never its key), or a
/// key's public key in PEM, under `data_key`. Secrets are refused (`InvalidSpec`).
pub fn config_map_data(object: ReadObject<'_>, data_key: &str) -> Result<BTreeMap<String, String>> {
    if !is_valid_key(data_key) {
        let shown: String = data_key.chars().take(64).collect();
        return Err(Error::InvalidSpec(format!(
            "configMap dataKey {shown:?} is not a valid ConfigMap key"
        )));
    }
    let value = match object {
        ReadObject::Certificate(certificate) => certificate.certificates_pem(),
        ReadObject::Key(jwk) => public_key_pem(jwk)?,
        ReadObject::Secret | ReadObject::MultiKeyValueSecret => {
            return Err(Error::InvalidSpec(CONFIG_MAP_PUBLIC_ONLY.into()));
        }
    };
    Ok(BTreeMap::from([(data_key.to_string(), value)]))
}

#[cfg(test)]
mod tests;
