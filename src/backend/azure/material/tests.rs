//! Fixtures come from `tests/fixtures/azure/make-fixtures.sh` (OpenSSL, throwaway keys)
//! and from a recorded real Key Vault response.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
use x509_parser::public_key::PublicKey;

use super::*;
use crate::api::{AzureContentType, Transform};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../../tests/fixtures/azure/", $name))
    };
}
macro_rules! fixture_bytes {
    ($name:literal) => {
        include_bytes!(concat!("../../../../tests/fixtures/azure/", $name))
    };
}

const RSA_ROOT: &str = fixture!("rsa-root.pem");
const RSA_INTERMEDIATE: &str = fixture!("rsa-intermediate.pem");
const RSA_LEAF: &str = fixture!("rsa-leaf.pem");
const RSA_LEAF_KEY: &str = fixture!("rsa-leaf.key");
const EC_ROOT: &str = fixture!("ec-root.pem");
const EC_LEAF: &str = fixture!("ec-leaf.pem");

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("fixture PEM").into_contents()
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn invalid_data(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::InvalidData(message)) => message,
        other => panic!("expected InvalidData, got {other:?}"),
    }
}

/// Fails if `message` holds any 16-character window of `secret` (base64 or PEM body).
fn assert_no_window(message: &str, secret: &str) {
    let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    let chars: Vec<char> = body.chars().collect();
    for window in chars.windows(16) {
        let window: String = window.iter().collect();
        assert!(
            !message.contains(&window),
            "error message leaks secret material: {message}"
        );
    }
}

fn rsa_chain_leaf_first() -> Vec<Vec<u8>> {
    vec![der(RSA_LEAF), der(RSA_INTERMEDIATE), der(RSA_ROOT)]
}

// --- PKCS#12 -----------------------------------------------------------------------------

#[test]
fn legacy_3des_pfx_is_read_and_ordered_leaf_first() {
    let value = b64(fixture_bytes!("rsa-legacy.pfx"));
    let cert = certificate(&value, Some(PKCS12), Some(ChainOrder::Ensureserverfirst)).unwrap();
    assert_eq!(cert.chain, rsa_chain_leaf_first());
    let key = cert.private_key.as_ref().expect("the PFX holds the key");
    assert_eq!(key.pkcs8_der(), der(RSA_LEAF_KEY).as_slice());
    assert_eq!(key.to_pem().expose(), RSA_LEAF_KEY.as_bytes());
}

#[test]
fn pbes2_aes_pfx_is_read_and_ordered_leaf_first() {
    let value = b64(fixture_bytes!("rsa-aes.pfx"));
    let cert = certificate(&value, Some(PKCS12), Some(ChainOrder::Ensureserverfirst)).unwrap();
    assert_eq!(cert.chain, rsa_chain_leaf_first());
    assert_eq!(
        cert.private_key.unwrap().pkcs8_der(),
        der(RSA_LEAF_KEY).as_slice()
    );
}

#[test]
fn without_chain_order_the_stored_order_is_kept() {
    // The PFX stores leaf, root, intermediate.
    let value = b64(fixture_bytes!("rsa-aes.pfx"));
    let cert = certificate(&value, Some(PKCS12), None).unwrap();
    assert_eq!(
        cert.chain,
        vec![der(RSA_LEAF), der(RSA_ROOT), der(RSA_INTERMEDIATE)]
    );
}

#[test]
fn pfx_without_key_gives_certificates_only() {
    let value = b64(fixture_bytes!("rsa-nokey.pfx"));
    let cert = certificate(&value, Some(PKCS12), Some(ChainOrder::Ensureserverfirst)).unwrap();
    assert!(cert.private_key.is_none());
    assert_eq!(cert.chain, rsa_chain_leaf_first());
    let message = invalid_data(cert.tls_data());
    assert!(message.contains("dataKey"), "{message}");
    let expected = format!("{RSA_LEAF}{RSA_INTERMEDIATE}{RSA_ROOT}");
    assert_eq!(cert.pem_bundle().expose(), expected.as_bytes());
}

#[test]
fn content_type_is_sniffed_when_absent() {
    let value = b64(fixture_bytes!("rsa-legacy.pfx"));
    assert!(
        certificate(&value, None, None)
            .unwrap()
            .private_key
            .is_some()
    );
    let bundle = fixture!("rsa-bundle.pem");
    assert!(
        certificate(bundle, None, None)
            .unwrap()
            .private_key
            .is_some()
    );
}

#[test]
fn recorded_key_vault_pfx_and_pem_are_read() {
    let pfx = certificate(
        fixture!("keyvault-recorded.pfx.b64"),
        Some(PKCS12),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    assert!(pfx.private_key.is_some());
    assert_eq!(pfx.chain.len(), 1);
    let pem = certificate(fixture!("keyvault-recorded.pem"), Some(PEM_FILE), None).unwrap();
    assert!(pem.private_key.is_some());
    assert_eq!(pem.chain.len(), 1);
}

#[test]
fn tampered_pfx_is_refused_without_echoing_it() {
    let mut bytes = fixture_bytes!("rsa-legacy.pfx").to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let value = b64(&bytes);
    let message = invalid_data(certificate(&value, Some(PKCS12), None));
    assert!(message.contains("PKCS#12"), "{message}");
    assert_no_window(&message, &value);
    assert_no_window(&message, RSA_LEAF_KEY);
}

#[test]
fn pfx_value_that_is_not_base64_is_refused() {
    let message = invalid_data(certificate("not*base64!", Some(PKCS12), None));
    assert!(message.contains("base64"), "{message}");
}

// --- PEM ---------------------------------------------------------------------------------

#[test]
fn pem_bundle_in_any_order_gives_tls_data_leaf_first() {
    let cert = certificate(
        fixture!("rsa-bundle.pem"),
        Some(PEM_FILE),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    let data = cert.tls_data().unwrap();
    let crt = format!("{RSA_LEAF}{RSA_INTERMEDIATE}{RSA_ROOT}");
    assert_eq!(data["tls.crt"].expose(), crt.as_bytes());
    assert_eq!(data["tls.key"].expose(), RSA_LEAF_KEY.as_bytes());
    assert_eq!(data.len(), 2);
    let bundle = format!("{RSA_LEAF_KEY}{crt}");
    assert_eq!(cert.pem_bundle().expose(), bundle.as_bytes());
}

#[test]
fn pkcs1_rsa_key_becomes_pkcs8() {
    let cert = certificate(
        fixture!("rsa-bundle-pkcs1.pem"),
        Some(PEM_FILE),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    assert_eq!(
        cert.private_key.unwrap().pkcs8_der(),
        der(RSA_LEAF_KEY).as_slice()
    );
    assert_eq!(cert.chain, vec![der(RSA_LEAF), der(RSA_INTERMEDIATE)]);
}

#[test]
fn sec1_ec_key_becomes_pkcs8_and_ec_chain_verifies() {
    let cert = certificate(
        fixture!("ec-bundle-sec1.pem"),
        Some(PEM_FILE),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    assert_eq!(cert.chain, vec![der(EC_LEAF), der(EC_ROOT)]);
    let key = cert.private_key.as_ref().unwrap();
    // Same key as OpenSSL's PKCS#8 file: both load to the same public key.
    let openssl_pkcs8 = PrivateKey::from_pkcs8(&der(fixture!("ec-leaf.key"))).unwrap();
    assert_eq!(
        order_chain(&cert.chain, Some(&openssl_pkcs8)).unwrap(),
        order_chain(&cert.chain, Some(key)).unwrap()
    );
    assert!(
        std::str::from_utf8(key.to_pem().expose())
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
}

#[test]
fn certificates_without_key_are_ordered_by_signature() {
    let cert = certificate(
        fixture!("rsa-certs-only.pem"),
        Some(PEM_FILE),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    assert!(cert.private_key.is_none());
    assert_eq!(cert.chain, rsa_chain_leaf_first());
}

#[test]
fn not_after_is_the_leafs() {
    let cert = certificate(fixture!("rsa-bundle.pem"), Some(PEM_FILE), None).unwrap();
    // The fixtures are valid for 36500 days from their making; notBefore would be ~2026.
    let year = cert
        .not_after
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .year();
    assert!(year > 2100, "{year}");
}

#[test]
fn text_around_pem_blocks_is_ignored() {
    // `openssl pkcs12 -nodes` writes "Bag Attributes" lines before each block.
    let value = format!(
        "Bag Attributes\n    localKeyID: 01 00 00 00\n{RSA_LEAF_KEY}subject=CN = leaf\n{RSA_LEAF}"
    );
    let cert = certificate(&value, Some(PEM_FILE), None).unwrap();
    assert_eq!(cert.chain, vec![der(RSA_LEAF)]);
    assert!(cert.private_key.is_some());
}

#[test]
fn encrypted_pem_key_is_refused() {
    let value =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let message = invalid_data(certificate(value, Some(PEM_FILE), None));
    assert!(message.contains("encrypted"), "{message}");
}

// --- chain checks ------------------------------------------------------------------------

#[test]
fn unrelated_certificate_is_refused_by_name() {
    let value = fixture!("rsa-bundle-unrelated.pem");
    let message = invalid_data(certificate(value, Some(PEM_FILE), None));
    assert!(message.contains("CN=Unrelated"), "{message}");
    assert_no_window(&message, RSA_LEAF_KEY);
}

#[test]
fn unrelated_certificate_without_key_is_refused_by_name() {
    let certs = vec![
        der(RSA_LEAF),
        der(fixture!("unrelated.pem")),
        der(RSA_ROOT),
        der(RSA_INTERMEDIATE),
    ];
    let message = invalid_data(order_chain(&certs, None));
    assert!(message.contains("CN=Unrelated"), "{message}");
    assert!(message.contains("CN=leaf.example.test"), "{message}");
}

#[test]
fn forged_link_with_a_matching_issuer_name_is_refused() {
    // forged-leaf names "RSA Intermediate" as its issuer, but another key signed it.
    let message = invalid_data(certificate(
        fixture!("forged-bundle.pem"),
        Some(PEM_FILE),
        None,
    ));
    assert!(message.contains("CN=forged.example.test"), "{message}");
    assert!(message.contains("CN=RSA Intermediate"), "{message}");
    assert!(message.contains("does not verify"), "{message}");
    // The same leaf with its real issuer is fine.
    let good = vec![
        der(fixture!("forged-leaf.pem")),
        der(fixture!("forged-intermediate.pem")),
        der(RSA_ROOT),
    ];
    assert_eq!(order_chain(&good, None).unwrap().len(), 3);
}

#[test]
fn tampered_signature_breaks_the_link() {
    let mut leaf = der(RSA_LEAF);
    let last = leaf.len() - 1;
    leaf[last] ^= 0x01; // the signature is the certificate's last field
    let message = invalid_data(order_chain(&[leaf, der(RSA_INTERMEDIATE)], None));
    assert!(message.contains("CN=RSA Intermediate"), "{message}");
    assert!(message.contains("does not verify"), "{message}");
}

#[test]
fn missing_intermediate_is_refused_and_missing_root_is_fine() {
    let key = PrivateKey::from_pkcs8(&der(RSA_LEAF_KEY)).unwrap();
    let message = invalid_data(order_chain(&[der(RSA_ROOT), der(RSA_LEAF)], Some(&key)));
    assert!(message.contains("CN=RSA Root"), "{message}");
    let ordered = order_chain(&[der(RSA_INTERMEDIATE), der(RSA_LEAF)], Some(&key)).unwrap();
    assert_eq!(ordered, vec![der(RSA_LEAF), der(RSA_INTERMEDIATE)]);
}

#[test]
fn key_of_another_certificate_is_refused() {
    let value = fixture!("mismatched-bundle.pem");
    let message = invalid_data(certificate(value, Some(PEM_FILE), None));
    assert!(message.contains("belongs to none"), "{message}");
    assert_no_window(&message, value);
}

#[test]
fn duplicates_are_dropped() {
    let certs = vec![der(RSA_INTERMEDIATE), der(RSA_LEAF), der(RSA_INTERMEDIATE)];
    assert_eq!(
        order_chain(&certs, None).unwrap(),
        vec![der(RSA_LEAF), der(RSA_INTERMEDIATE)]
    );
}

// --- JWK ---------------------------------------------------------------------------------

/// Builds the JWK Key Vault would return for an OpenSSL public key, from its DER.
fn jwk_of(spki_pem: &str, crv: Option<&str>) -> serde_json::Value {
    let spki_der = der(spki_pem);
    let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
    let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    match spki.parsed().unwrap() {
        PublicKey::RSA(rsa) => serde_json::json!({
            "kty": "RSA", "n": enc(rsa.modulus), "e": enc(rsa.exponent),
        }),
        PublicKey::EC(point) => {
            let xy = &point.data()[1..];
            let (x, y) = xy.split_at(xy.len() / 2);
            serde_json::json!({"kty": "EC-HSM", "crv": crv.unwrap(), "x": enc(x), "y": enc(y)})
        }
        _ => panic!("unexpected fixture key type"),
    }
}

#[test]
fn jwk_public_keys_match_openssl() {
    for (pem_text, crv) in [
        (fixture!("rsa-leaf.pub.pem"), None),
        (fixture!("ec-p256.pub.pem"), Some("P-256")),
        (fixture!("ec-p384.pub.pem"), Some("P-384")),
        (fixture!("ec-p521.pub.pem"), Some("P-521")),
        (fixture!("ec-p256k.pub.pem"), Some("P-256K")),
    ] {
        assert_eq!(
            public_key_pem(&jwk_of(pem_text, crv)).unwrap(),
            pem_text,
            "{crv:?}"
        );
    }
}

#[test]
fn jwk_with_leading_zero_modulus_is_the_same_key() {
    let pem_text = fixture!("rsa-leaf.pub.pem");
    let mut jwk = jwk_of(pem_text, None);
    let mut n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    n.insert(0, 0);
    jwk["n"] = URL_SAFE_NO_PAD.encode(n).into();
    jwk["kty"] = "RSA-HSM".into();
    assert_eq!(public_key_pem(&jwk).unwrap(), pem_text);
}

#[test]
fn jwk_off_curve_and_symmetric_keys_are_refused() {
    let mut jwk = jwk_of(fixture!("ec-p256.pub.pem"), Some("P-256"));
    let mut y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    y[31] ^= 0x01;
    jwk["y"] = URL_SAFE_NO_PAD.encode(y).into();
    assert!(invalid_data(public_key_pem(&jwk)).contains("P-256"));
    let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
    assert!(invalid_data(public_key_pem(&oct)).contains("symmetric"));
}

// --- multi-key-value ---------------------------------------------------------------------

fn texts(data: &BTreeMap<String, SecretValue>) -> Vec<(&str, &str)> {
    data.iter()
        .map(|(k, v)| (k.as_str(), std::str::from_utf8(v.expose()).unwrap()))
        .collect()
}

#[test]
fn json_object_expands_to_keys() {
    let data = multi_key_value(
        r#"{"user": "app", "port": 5432, "tls": true, "ratio": 0.5}"#,
        AzureContentType::Json,
    )
    .unwrap();
    assert_eq!(
        texts(&data),
        [
            ("port", "5432"),
            ("ratio", "0.5"),
            ("tls", "true"),
            ("user", "app")
        ]
    );
}

#[test]
fn yaml_mapping_expands_to_keys() {
    let data = multi_key_value(
        "user: app\nport: 5432\ntls: true\nnote: 'a: b'\n",
        AzureContentType::Yaml,
    )
    .unwrap();
    assert_eq!(
        texts(&data),
        [
            ("note", "a: b"),
            ("port", "5432"),
            ("tls", "true"),
            ("user", "app")
        ]
    );
}

#[test]
fn nested_values_are_refused_naming_the_key() {
    let message = invalid_data(multi_key_value(
        r#"{"ok": "1", "db": {"password": "hunter2"}}"#,
        AzureContentType::Json,
    ));
    assert!(message.contains("\"db\""), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let message = invalid_data(multi_key_value(
        "list:\n  - hunter2\n",
        AzureContentType::Yaml,
    ));
    assert!(message.contains("\"list\""), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    let message = invalid_data(multi_key_value(r#"{"gone": null}"#, AzureContentType::Json));
    assert!(message.contains("\"gone\""), "{message}");
}

#[test]
fn bad_keys_repeats_and_non_objects_are_refused() {
    let message = invalid_data(multi_key_value(r#"{"a/b": "x"}"#, AzureContentType::Json));
    assert!(message.contains("\"a/b\""), "{message}");
    let message = invalid_data(multi_key_value(
        r#"{"a": "x", "a": "y"}"#,
        AzureContentType::Json,
    ));
    assert!(message.contains("repeats"), "{message}");
    invalid_data(multi_key_value(r#"["hunter2"]"#, AzureContentType::Json));
    invalid_data(multi_key_value("- hunter2\n", AzureContentType::Yaml));
    let message = invalid_data(multi_key_value(r#"{"a": "hunter2"#, AzureContentType::Json));
    assert!(!message.contains("hunter2"), "{message}");
}

// --- transforms --------------------------------------------------------------------------

#[test]
fn transforms_apply_in_order() {
    use Transform::*;
    assert_eq!(
        apply_transforms(b" hi \n".to_vec(), &[Trim, Base64encode]).unwrap(),
        b"aGk="
    );
    assert_eq!(
        apply_transforms(b" hi \n".to_vec(), &[Base64encode, Trim]).unwrap(),
        b"IGhpIAo="
    );
    assert_eq!(
        apply_transforms(b"IGhpIA==\n".to_vec(), &[Base64decode, Trim]).unwrap(),
        b"hi"
    );
    assert_eq!(
        apply_transforms(b"IGhpIA".to_vec(), &[Base64decode]).unwrap(),
        b" hi "
    );
    assert_eq!(apply_transforms(b"x".to_vec(), &[]).unwrap(), b"x");
}

#[test]
fn invalid_base64_is_refused_without_echoing_it() {
    let value = b"hunter2-is-not-base64!".to_vec();
    let message = invalid_data(apply_transforms(value, &[Transform::Base64decode]));
    assert!(message.contains("base64decode"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

// --- ConfigMaps --------------------------------------------------------------------------

#[test]
fn only_public_material_goes_to_a_config_map() {
    assert!(config_map_allowed(AzureObjectType::Certificate).is_ok());
    assert!(config_map_allowed(AzureObjectType::Key).is_ok());
    assert!(matches!(
        config_map_allowed(AzureObjectType::Secret),
        Err(Error::InvalidSpec(_))
    ));
    assert!(matches!(
        config_map_data(ReadObject::MultiKeyValueSecret, "data"),
        Err(Error::InvalidSpec(_))
    ));

    let cert = certificate(
        fixture!("rsa-bundle.pem"),
        Some(PEM_FILE),
        Some(ChainOrder::Ensureserverfirst),
    )
    .unwrap();
    let data = config_map_data(ReadObject::Certificate(&cert), "ca.crt").unwrap();
    assert_eq!(
        data["ca.crt"],
        format!("{RSA_LEAF}{RSA_INTERMEDIATE}{RSA_ROOT}")
    );
    assert!(!data["ca.crt"].contains("PRIVATE KEY"));

    let pub_pem = fixture!("ec-p256.pub.pem");
    let jwk = jwk_of(pub_pem, Some("P-256"));
    let data = config_map_data(ReadObject::Key(&jwk), "key.pem").unwrap();
    assert_eq!(data["key.pem"], pub_pem);
    assert!(matches!(
        config_map_data(ReadObject::Key(&jwk), "a/b"),
        Err(Error::InvalidSpec(_))
    ));
}

#[test]
fn a_yaml_alias_bomb_is_refused_before_it_expands() {
    let list = vec!["1"; 4000].join(",");
    let refs = vec!["*a"; 5500].join(",");
    let bomb = format!("a: &a [{list}]\nb: [{refs}]\n");
    let started = std::time::Instant::now();
    let err = multi_key_value(&bomb, AzureContentType::Yaml).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused at once"
    );
    assert!(
        err.to_string().contains("entry \"a\" is a nested value"),
        "{err}"
    );
    // Aliases of scalars are plain values.
    let ok = multi_key_value("a: &x one\nb: *x\n", AzureContentType::Yaml).unwrap();
    assert_eq!(ok["b"].expose(), b"one");
}
