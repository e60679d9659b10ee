//! Reading a Key Vault certificate's PKCS#12 (PFX), which has no password.
//!
//! "No password" has two encodings, and Key Vault uses the one common libraries skip: the
//! PKCS#12 key derivation of RFC 7292 (appendix B) takes the password as a NUL-terminated
//! BMPString, so "" is the two bytes `00 00` (OpenSSL's `-passout pass:`), while Windows
//! and Key Vault derive from a zero-length password (OpenSSL's NULL). `p12-keystore` and the
//! `kdf::derive_key_utf8` of RustCrypto's `pkcs12` only do the first, and fail the MAC of
//! every real Key Vault PFX. So the ASN.1 comes from RustCrypto's `pkcs12` and `cms`,
//! PBES2 from `pkcs5`, 3DES from `des` + `cbc`, HMAC and digests from aws-lc-rs, and this
//! module tries both encodings, as OpenSSL does.
//!
//! Supported: MAC with SHA-1 or SHA-2; bags in plain data or encrypted with
//! pbeWithSHAAnd3-KeyTripleDES-CBC (Key Vault's) or PBES2 (PBKDF2 + AES-CBC, OpenSSL 3's
//! and Windows' current default).

use aws_lc_rs::{digest, hmac};
use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};
use der::asn1::{ContextSpecific, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use pkcs5::pbes2;
use pkcs12::cms::content_info::ContentInfo;
use pkcs12::cms::encrypted_data::EncryptedData;
use pkcs12::pbe_params::{EncryptedPrivateKeyInfo, Pkcs12PbeParams};
use pkcs12::pfx::{Pfx, Version};
use pkcs12::safe_bag::SafeContents;
use pkcs12::{AuthenticatedSafe, CertBag, MacData};

use crate::error::{Error, Result};

/// Iteration counts above this are refused: they only cost CPU (a tenant controls what
/// its vault returns). Key Vault uses 2000, OpenSSL 2048, Java's keytool 10000.
const MAX_ITERATIONS: u32 = 10_000;
/// Encrypted parts (safes and shrouded keys) a PFX may have: Key Vault's and OpenSSL's
/// have two. Each costs key derivations, so their number is bounded too.
const MAX_ENCRYPTED_PARTS: usize = 4;

const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const KEY_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.1");
const SHROUDED_KEY_BAG: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.2");
const CERT_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.3");
const X509_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const PBE_SHA1_3DES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// The two encodings of "no password" for the PKCS#12 key derivation.
const EMPTY_BMP: &[u8] = &[0, 0];
const ZERO_LENGTH: &[u8] = &[];

/// What a PFX holds: PKCS#8 private keys and X.509 certificates (DER), in bag order.
pub struct Contents {
    pub keys: Vec<Vec<u8>>,
    pub certificates: Vec<Vec<u8>>,
}

fn invalid(why: &str) -> Error {
    Error::InvalidData(format!("the certificate's PKCS#12 cannot be read: {why}"))
}

fn malformed<E>(_: E) -> Error {
    invalid("it is not a well-formed PKCS#12 file")
}

/// Decodes a PFX that has no password. Library errors are not passed on: they can quote
/// decoded bytes.
pub fn read(der: &[u8]) -> Result<Contents> {
    let pfx = Pfx::from_der(der).map_err(malformed)?;
    if pfx.version != Version::V3 {
        return Err(invalid("its version is not 3"));
    }
    if pfx.auth_safe.content_type != DATA {
        return Err(invalid(
            "it is signed with a public key, not protected by a password",
        ));
    }
    let auth_safe = octets(&pfx.auth_safe)?;
    let passwords: Vec<&[u8]> = match &pfx.mac_data {
        Some(mac) => vec![mac_password(mac, &auth_safe)?],
        None => vec![EMPTY_BMP, ZERO_LENGTH],
    };
    let safes = AuthenticatedSafe::from_der(&auth_safe).map_err(malformed)?;
    let mut contents = Contents {
        keys: Vec::new(),
        certificates: Vec::new(),
    };
    let mut encrypted_parts = 0;
    let mut count_encrypted = || {
        encrypted_parts += 1;
        if encrypted_parts > MAX_ENCRYPTED_PARTS {
            Err(invalid(&format!(
                "it has more than {MAX_ENCRYPTED_PARTS} encrypted parts"
            )))
        } else {
            Ok(())
        }
    };
    for safe in &safes {
        let bags = match safe.content_type {
            DATA => octets(safe)?,
            ENCRYPTED_DATA => {
                let encrypted = EncryptedData::from_der(&safe.content.to_der().map_err(malformed)?)
                    .map_err(malformed)?;
                let info = &encrypted.enc_content_info;
                count_encrypted()?;
                match &info.encrypted_content {
                    Some(data) => decrypt(&info.content_enc_alg, data.as_bytes(), &passwords)?,
                    None => continue,
                }
            }
            _ => {
                return Err(invalid(
                    "it holds content that is neither data nor encrypted data",
                ));
            }
        };
        for bag in SafeContents::from_der(&bags).map_err(malformed)? {
            match bag.bag_id {
                KEY_BAG => {
                    // PrivateKeyInfo, unencrypted: keep its DER as it is.
                    let key =
                        ContextSpecific::<der::Any>::from_der(&bag.bag_value).map_err(malformed)?;
                    contents.keys.push(key.value.to_der().map_err(malformed)?);
                }
                SHROUDED_KEY_BAG => {
                    let info = ContextSpecific::<EncryptedPrivateKeyInfo>::from_der(&bag.bag_value)
                        .map_err(malformed)?
                        .value;
                    count_encrypted()?;
                    contents.keys.push(decrypt(
                        &info.encryption_algorithm,
                        info.encrypted_data.as_bytes(),
                        &passwords,
                    )?);
                }
                CERT_BAG => {
                    let cert = ContextSpecific::<CertBag>::from_der(&bag.bag_value)
                        .map_err(malformed)?
                        .value;
                    if cert.cert_id != X509_CERTIFICATE {
                        return Err(invalid("it holds a certificate that is not X.509"));
                    }
                    contents
                        .certificates
                        .push(cert.cert_value.as_bytes().to_vec());
                }
                // CRLs, secrets and nested safes have no place in a TLS Secret.
                _ => {}
            }
        }
    }
    Ok(contents)
}

fn octets(info: &ContentInfo) -> Result<Vec<u8>> {
    let any = info.content.to_der().map_err(malformed)?;
    Ok(OctetString::from_der(&any)
        .map_err(malformed)?
        .into_bytes()
        .into_vec())
}

/// The encoding of "no password" under which the MAC verifies.
fn mac_password(mac: &MacData, data: &[u8]) -> Result<&'static [u8]> {
    let (hmac_alg, digest_alg, block) = match mac.mac.algorithm.oid {
        SHA1 => (
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            64,
        ),
        SHA256 => (hmac::HMAC_SHA256, &digest::SHA256, 64),
        SHA384 => (hmac::HMAC_SHA384, &digest::SHA384, 128),
        SHA512 => (hmac::HMAC_SHA512, &digest::SHA512, 128),
        _ => {
            return Err(invalid(
                "its integrity check (MAC) uses an unsupported digest",
            ));
        }
    };
    let iterations = iterations(mac.iterations)?;
    for password in [EMPTY_BMP, ZERO_LENGTH] {
        let key = kdf(
            digest_alg,
            block,
            password,
            mac.mac_salt.as_bytes(),
            3,
            iterations,
            digest_alg.output_len(),
        );
        let key = hmac::Key::new(hmac_alg, &key);
        if hmac::verify(&key, data, mac.mac.digest.as_bytes()).is_ok() {
            return Ok(password);
        }
    }
    Err(invalid(
        "its integrity check (MAC) fails without a password; Key Vault's PKCS#12 has none",
    ))
}

fn iterations(count: impl TryInto<u32>) -> Result<u32> {
    match count.try_into() {
        Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Ok(n),
        _ => Err(invalid(&format!(
            "its iteration count is not between 1 and {MAX_ITERATIONS}"
        ))),
    }
}

fn decrypt(
    algorithm: &pkcs12::cms::cert::x509::spki::AlgorithmIdentifierOwned,
    data: &[u8],
    passwords: &[&[u8]],
) -> Result<Vec<u8>> {
    let params = algorithm
        .parameters
        .as_ref()
        .ok_or_else(|| invalid("an encrypted bag has no parameters"))?
        .to_der()
        .map_err(malformed)?;
    let undecryptable = || invalid("its bags do not decrypt without a password");
    match algorithm.oid {
        PBES2 => {
            let params = pbes2::Parameters::from_der(&params).map_err(malformed)?;
            match &params.kdf {
                pbes2::Kdf::Pbkdf2(kdf) => iterations(kdf.iteration_count)?,
                _ => return Err(invalid("its bags use a key derivation other than PBKDF2")),
            };
            // PBES2 takes the password as bytes: both encodings of "none" are empty.
            params
                .decrypt(ZERO_LENGTH, data)
                .map_err(|_| undecryptable())
        }
        PBE_SHA1_3DES => {
            let params = Pkcs12PbeParams::from_der(&params).map_err(malformed)?;
            let rounds = iterations(params.iterations)?;
            let salt = params.salt.as_bytes();
            let sha1 = &digest::SHA1_FOR_LEGACY_USE_ONLY;
            passwords
                .iter()
                .find_map(|password| {
                    let key = kdf(sha1, 64, password, salt, 1, rounds, 24);
                    let iv = kdf(sha1, 64, password, salt, 2, rounds, 8);
                    cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                        .ok()?
                        .decrypt_padded_vec::<Pkcs7>(data)
                        .ok()
                })
                .ok_or_else(undecryptable)
        }
        _ => Err(invalid(
            "its bags use an encryption other than 3DES or PBES2 (RC2 and RC4 are not supported)",
        )),
    }
}

/// The PKCS#12 key derivation (RFC 7292, appendix B.2). `block` is the digest's input
/// block size `v`; `id` is 1 for a key, 2 for an IV, 3 for a MAC key; `password` is
/// already encoded (see [`EMPTY_BMP`] and [`ZERO_LENGTH`]).
fn kdf(
    algorithm: &'static digest::Algorithm,
    block: usize,
    password: &[u8],
    salt: &[u8],
    id: u8,
    rounds: u32,
    len: usize,
) -> Vec<u8> {
    let stretch = |input: &[u8]| -> Vec<u8> {
        let n = input.len().div_ceil(block) * block;
        input.iter().copied().cycle().take(n).collect()
    };
    let mut i: Vec<u8> = stretch(salt);
    i.extend(stretch(password));
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut ctx = digest::Context::new(algorithm);
        ctx.update(&vec![id; block]);
        ctx.update(&i);
        let mut a = ctx.finish();
        for _ in 1..rounds {
            a = digest::digest(algorithm, a.as_ref());
        }
        out.extend_from_slice(a.as_ref());
        if out.len() >= len {
            break;
        }
        // I_j = (I_j + B + 1) mod 2^(8v) for each v-byte block of I, B = A repeated.
        let b: Vec<u8> = a.as_ref().iter().copied().cycle().take(block).collect();
        for chunk in i.chunks_mut(block) {
            let mut carry = 1u16;
            for (x, y) in chunk.iter_mut().zip(&b).rev() {
                let sum = u16::from(*x) + u16::from(*y) + carry;
                *x = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn mac_password_of(der: &[u8]) -> &'static [u8] {
        let pfx = Pfx::from_der(der).unwrap();
        let data = octets(&pfx.auth_safe).unwrap();
        mac_password(pfx.mac_data.as_ref().unwrap(), &data).unwrap()
    }

    #[test]
    fn both_encodings_of_no_password_are_recognised() {
        // OpenSSL's `-passout pass:` is the NUL-terminated empty BMPString...
        let openssl = include_bytes!("../../../../tests/fixtures/azure/rsa-legacy.pfx");
        assert_eq!(mac_password_of(openssl), EMPTY_BMP);
        // ...while Key Vault's own PFX derives from a zero-length password.
        let recorded = include_str!("../../../../tests/fixtures/azure/keyvault-recorded.pfx.b64");
        let der = base64::engine::general_purpose::STANDARD
            .decode(recorded.trim())
            .unwrap();
        assert_eq!(mac_password_of(&der), ZERO_LENGTH);
        let contents = read(&der).unwrap();
        assert_eq!((contents.keys.len(), contents.certificates.len()), (1, 1));
    }
}
