//! Certificate chains: which certificate a private key belongs to, and the order of its
//! issuers, each link checked by the child's signature under the parent's key (names
//! alone can be forged: anyone can make a certificate whose subject copies another's).
//!
//! Keys and signatures go through aws-lc-rs, the library rustls already builds; X.509
//! parsing and the signature-algorithm mapping are x509-parser's (`verify-aws`).

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair};
use x509_parser::error::X509Error;
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};

use crate::backend::SecretValue;
use crate::error::{Error, Result};

/// At most this many certificates in one Key Vault certificate. Key Vault keeps a secret
/// under 25 KB, so real chains are far below it; the bound keeps the pairwise signature
/// checks small whatever the source holds.
pub const MAX_CERTIFICATES: usize = 32;

/// The curves Key Vault offers for EC keys, tried in turn on an EC private key.
const EC_CURVES: [(&EcdsaSigningAlgorithm, &str); 4] = [
    (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, "P-256"),
    (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, "P-384"),
    (&signature::ECDSA_P521_SHA512_ASN1_SIGNING, "P-521"),
    (&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING, "P-256K"),
];

const UNREADABLE_KEY: &str = "the private key is not a well-formed RSA (2048 to 8192 bits) or EC \
    (P-256, P-384, P-521, P-256K) key";

/// A certificate's private key, checked to be a usable RSA or EC key, kept as PKCS#8.
/// Its `Debug` shows nothing of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pkcs8: Vec<u8>,
    /// The matching public key's bits (the BIT STRING of its SubjectPublicKeyInfo).
    public_key_bits: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// A PKCS#8 `PrivateKeyInfo` (`BEGIN PRIVATE KEY`), kept byte for byte.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
            return Self::new(der.to_vec(), rsa.public_key().as_der());
        }
        for (curve, _) in EC_CURVES {
            if let Ok(ec) = EcdsaKeyPair::from_pkcs8(curve, der) {
                return Self::new(der.to_vec(), ec.public_key().as_der());
            }
        }
        Err(Error::InvalidData(UNREADABLE_KEY.into()))
    }

    /// A PKCS#1 `RSAPrivateKey` (`BEGIN RSA PRIVATE KEY`), converted to PKCS#8.
    pub fn from_pkcs1(der: &[u8]) -> Result<Self> {
        let rsa =
            RsaKeyPair::from_der(der).map_err(|_| Error::InvalidData(UNREADABLE_KEY.into()))?;
        let pkcs8: Pkcs8V1Der<'_> = rsa
            .as_der()
            .map_err(|_| Error::InvalidData(UNREADABLE_KEY.into()))?;
        Self::new(pkcs8.as_ref().to_vec(), rsa.public_key().as_der())
    }

    /// A SEC1 `ECPrivateKey` (`BEGIN EC PRIVATE KEY`), converted to PKCS#8.
    pub fn from_sec1(der: &[u8]) -> Result<Self> {
        for (curve, _) in EC_CURVES {
            if let Ok(ec) = EcdsaKeyPair::from_private_key_der(curve, der) {
                let pkcs8 = ec
                    .to_pkcs8v1()
                    .map_err(|_| Error::InvalidData(UNREADABLE_KEY.into()))?;
                return Self::new(pkcs8.as_ref().to_vec(), ec.public_key().as_der());
            }
        }
        Err(Error::InvalidData(UNREADABLE_KEY.into()))
    }

    fn new(
        pkcs8: Vec<u8>,
        public: std::result::Result<PublicKeyX509Der<'_>, aws_lc_rs::error::Unspecified>,
    ) -> Result<Self> {
        let public = public.map_err(|_| Error::InvalidData(UNREADABLE_KEY.into()))?;
        let (_, spki) = SubjectPublicKeyInfo::from_der(public.as_ref())
            .map_err(|_| Error::InvalidData(UNREADABLE_KEY.into()))?;
        Ok(Self {
            public_key_bits: spki.subject_public_key.data.to_vec(),
            pkcs8,
        })
    }

    /// The key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn to_pem(&self) -> SecretValue {
        SecretValue::new(super::pem_block("PRIVATE KEY", &self.pkcs8))
    }

    fn belongs_to(&self, cert: &X509Certificate<'_>) -> bool {
        cert.public_key().subject_public_key.data.as_ref() == self.public_key_bits.as_slice()
    }
}

/// One parsed certificate, named for messages by its place in the source (1-based) and
/// subject. Subjects are public.
struct Entry<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
    position: usize,
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {} ({})", self.position, self.cert.subject())
    }
}

impl Entry<'_> {
    fn names_as_issuer(&self, parent: &Entry<'_>) -> bool {
        let (issuer, subject) = (self.cert.issuer(), parent.cert.subject());
        issuer.as_raw() == subject.as_raw() || issuer.to_string() == subject.to_string()
    }

    /// Whether `parent` issued `self`: its subject is our issuer and its key signed us.
    fn issued_by(&self, parent: &Entry<'_>) -> bool {
        self.names_as_issuer(parent)
            && self
                .cert
                .verify_signature(Some(parent.cert.public_key()))
                .is_ok()
    }

    fn self_signed(&self) -> bool {
        self.issued_by(self)
    }
}

/// The certificates (DER) in their order, without exact duplicates, which PKCS#12 files
/// sometimes carry.
pub(super) fn distinct(certificates: &[Vec<u8>]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::with_capacity(certificates.len());
    for der in certificates {
        if !out.contains(&der.as_slice()) {
            out.push(der);
        }
    }
    out
}

fn parse<'a>(certificates: &[&'a [u8]]) -> Result<Vec<Entry<'a>>> {
    if certificates.is_empty() {
        return Err(Error::InvalidData(
            "the certificate holds no X.509 certificate".into(),
        ));
    }
    if certificates.len() > MAX_CERTIFICATES {
        return Err(Error::InvalidData(format!(
            "the certificate holds {} certificates; vaultsync accepts at most {MAX_CERTIFICATES}",
            certificates.len()
        )));
    }
    certificates
        .iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(Entry {
                der,
                cert,
                position: i + 1,
            }),
            _ => Err(Error::InvalidData(format!(
                "certificate {} is not a well-formed X.509 certificate",
                i + 1
            ))),
        })
        .collect()
}

/// The certificates in chain order: the leaf first, then its issuer, and so on up to a
/// self-signed root or the last issuer present (the root may be left out). The leaf is
/// the certificate of `key` when there is one, otherwise the one certificate that issued
/// none of the others. Every link is checked by signature (RSA PKCS#1 v1.5 and PSS with
/// SHA-2, ECDSA P-256/P-384 with SHA-256/384, Ed25519). A certificate that is not on the
/// leaf's path (unrelated, or whose link does not verify) makes the whole set
/// `InvalidData`, naming it. Exact duplicates are dropped.
pub fn order_chain(certificates: &[Vec<u8>], key: Option<&PrivateKey>) -> Result<Vec<Vec<u8>>> {
    let distinct = distinct(certificates);
    let entries = parse(&distinct)?;
    let n = entries.len();
    // issued[c][p]: p issued c. At most 32² name comparisons; signatures only on a match.
    let issued: Vec<Vec<bool>> = entries
        .iter()
        .enumerate()
        .map(|(c, child)| {
            entries
                .iter()
                .enumerate()
                .map(|(p, parent)| c != p && child.issued_by(parent))
                .collect()
        })
        .collect();
    let issues_another = |p: usize| (0..n).any(|c| issued[c][p]);

    let leaf = find_leaf(&entries, key, &issues_another)?;
    let mut chain = vec![leaf];
    let mut used = vec![false; n];
    used[leaf] = true;
    loop {
        let current = *chain.last().unwrap_or(&leaf);
        if entries[current].self_signed() {
            break;
        }
        match (0..n).find(|&p| !used[p] && issued[current][p]) {
            Some(parent) => {
                used[parent] = true;
                chain.push(parent);
            }
            None => break,
        }
    }

    let left: Vec<&Entry<'_>> = (0..n).filter(|&i| !used[i]).map(|i| &entries[i]).collect();
    if left.is_empty() {
        return Ok(chain.iter().map(|&i| entries[i].der.to_vec()).collect());
    }
    let last = &entries[*chain.last().unwrap_or(&leaf)];
    if let Some(message) = broken_link(last, &left) {
        return Err(Error::InvalidData(message));
    }
    let names: Vec<String> = left.iter().map(|e| e.to_string()).collect();
    Err(Error::InvalidData(format!(
        "{} {} not on the chain of the leaf, {}: every certificate must be the leaf or an \
         issuer of the one before it",
        names.join(", "),
        if names.len() == 1 { "is" } else { "are" },
        entries[leaf]
    )))
}

/// The usual forgery or mix-up: a certificate with `child`'s issuer name but not the key
/// that signed `child`.
fn broken_link(child: &Entry<'_>, candidates: &[&Entry<'_>]) -> Option<String> {
    let named = candidates
        .iter()
        .find(|e| !std::ptr::eq(**e, child) && child.names_as_issuer(e) && !child.issued_by(e))?;
    let why = match child.cert.verify_signature(Some(named.cert.public_key())) {
        Err(X509Error::SignatureUnsupportedAlgorithm) => format!(
            "vaultsync cannot check its signature algorithm ({})",
            child.cert.signature_algorithm.algorithm
        ),
        _ => "its signature does not verify with that certificate's key".to_string(),
    };
    Some(format!(
        "{child} names its issuer {}, and {named} has that subject, but {why}: the chain is \
         broken there",
        child.cert.issuer()
    ))
}

fn find_leaf(
    entries: &[Entry<'_>],
    key: Option<&PrivateKey>,
    issues_another: &dyn Fn(usize) -> bool,
) -> Result<usize> {
    let list = |ids: &[usize]| -> String {
        ids.iter()
            .map(|&i| entries[i].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match key {
        Some(key) => {
            let owners: Vec<usize> = (0..entries.len())
                .filter(|&i| key.belongs_to(&entries[i].cert))
                .collect();
            let ends: Vec<usize> = owners
                .iter()
                .copied()
                .filter(|&i| !issues_another(i))
                .collect();
            match (owners.as_slice(), ends.as_slice()) {
                ([], _) => Err(Error::InvalidData(format!(
                    "the private key belongs to none of the certificates ({} in all)",
                    entries.len()
                ))),
                ([only], _) | (_, [only]) => Ok(*only),
                _ => Err(Error::InvalidData(format!(
                    "several certificates carry the private key's public key ({}): a Key Vault \
                     certificate has one leaf",
                    list(&owners)
                ))),
            }
        }
        None => {
            let ends: Vec<usize> = (0..entries.len()).filter(|&i| !issues_another(i)).collect();
            match ends.as_slice() {
                [only] => Ok(*only),
                [] => Err(Error::InvalidData(
                    "the certificates issue each other in a loop: no certificate is a leaf".into(),
                )),
                _ => {
                    let all: Vec<&Entry<'_>> = entries.iter().collect();
                    let broken = ends.iter().find_map(|&e| broken_link(&entries[e], &all));
                    Err(Error::InvalidData(broken.unwrap_or_else(|| {
                        format!(
                            "the certificates do not form one chain: {} issued no other \
                             certificate, and a chain has one leaf",
                            list(&ends)
                        )
                    })))
                }
            }
        }
    }
}

/// The end of validity (notAfter) of a certificate.
pub fn not_after(der: &[u8]) -> Option<jiff::Timestamp> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    jiff::Timestamp::from_second(cert.validity().not_after.timestamp()).ok()
}
