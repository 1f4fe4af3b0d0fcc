//! Small DER jobs the CA needs and no dependency does for us with ring:
//! wrapping PKCS#1 / SEC1 private keys into PKCS#8 (rcgen on ring reads only
//! PKCS#8), and writing the PKCS#12 files mitmproxy puts next to its CA.
//!
//! The PKCS#12 layout mirrors what Python `cryptography` writes for mitmproxy
//! with `NoEncryption`: unencrypted bags (certificate bag, then the key bag),
//! `friendlyName` and `localKeyID` attributes, and an HMAC-SHA256 integrity
//! MAC under the empty password (RFC 7292, 2048 iterations, 8-byte salt).

use ring::rand::{SecureRandom, SystemRandom};
use yasna::models::ObjectIdentifier;
use yasna::{DERWriter, Tag};

const OID_RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
/// Named curves tried when a SEC1 key does not say which curve it is on.
pub(crate) const OID_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
pub(crate) const OID_P384: &[u64] = &[1, 3, 132, 0, 34];
const OID_PKCS7_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
const OID_KEY_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 1];
const OID_CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
const OID_X509_CERT: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
const OID_FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
const OID_LOCAL_KEY_ID: &[u64] = &[1, 2, 840, 113549, 1, 9, 21];
const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];

/// PBKDF iteration count of the PKCS#12 MAC (what `cryptography` uses).
const MAC_ITERATIONS: u64 = 2048;

fn oid(arcs: &[u64]) -> ObjectIdentifier {
    ObjectIdentifier::from_slice(arcs)
}

/// PKCS#1 `RSAPrivateKey` DER → PKCS#8 `PrivateKeyInfo` DER.
pub(crate) fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(OID_RSA_ENCRYPTION));
                w.next().write_null();
            });
            w.next().write_bytes(pkcs1);
        })
    })
}

/// SEC1 `ECPrivateKey` DER → PKCS#8 `PrivateKeyInfo` DER on the named curve
/// `curve` (ring rejects the result if the key says it is on another curve).
pub(crate) fn sec1_to_pkcs8(sec1: &[u8], curve: &[u64]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(OID_EC_PUBLIC_KEY));
                w.next().write_oid(&oid(curve));
            });
            w.next().write_bytes(sec1);
        })
    })
}

/// `ContentInfo { pkcs7-data, [0] EXPLICIT OCTET STRING content }`.
fn write_data_content_info(w: DERWriter, content: &[u8]) {
    w.write_sequence(|w| {
        w.next().write_oid(&oid(OID_PKCS7_DATA));
        w.next()
            .write_tagged(Tag::context(0), |w| w.write_bytes(content));
    });
}

/// Bag attributes: friendlyName (BMPString) and, for key/cert pairs, localKeyID.
fn write_bag_attributes(w: DERWriter, friendly_name: &str, local_key_id: Option<&[u8]>) {
    w.write_set_of(|w| {
        w.next().write_sequence(|w| {
            w.next().write_oid(&oid(OID_FRIENDLY_NAME));
            w.next()
                .write_set_of(|w| w.next().write_bmp_string(friendly_name));
        });
        if let Some(id) = local_key_id {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(OID_LOCAL_KEY_ID));
                w.next().write_set_of(|w| w.next().write_bytes(id));
            });
        }
    });
}

/// An unprotected PKCS#12 file (PFX) holding `cert_der` and, optionally, the
/// matching PKCS#8 private key, with an integrity MAC under the empty password
/// (what `openssl pkcs12 -passin pass:` and the Windows/macOS/Android importers
/// expect for "no password").
pub(crate) fn pkcs12(
    friendly_name: &str,
    cert_der: &[u8],
    key_pkcs8: Option<&[u8]>,
) -> Result<Vec<u8>, ring::error::Unspecified> {
    let local_key_id = key_pkcs8.map(|_| {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
        d.as_ref().to_vec()
    });
    let cert_contents = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(OID_CERT_BAG));
                w.next().write_tagged(Tag::context(0), |w| {
                    w.write_sequence(|w| {
                        w.next().write_oid(&oid(OID_X509_CERT));
                        w.next()
                            .write_tagged(Tag::context(0), |w| w.write_bytes(cert_der));
                    })
                });
                write_bag_attributes(w.next(), friendly_name, local_key_id.as_deref());
            });
        })
    });
    let key_contents = key_pkcs8.map(|key| {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&oid(OID_KEY_BAG));
                    w.next().write_tagged(Tag::context(0), |w| w.write_der(key));
                    write_bag_attributes(w.next(), friendly_name, local_key_id.as_deref());
                });
            })
        })
    });
    let auth_safe = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            write_data_content_info(w.next(), &cert_contents);
            if let Some(k) = &key_contents {
                write_data_content_info(w.next(), k);
            }
        })
    });

    let mut salt = [0u8; 8];
    SystemRandom::new().fill(&mut salt)?;
    // The empty password as PKCS#12 wants it: BMPString with its 2-byte NUL.
    let mac_key = pkcs12_kdf_sha256(&[0, 0], &salt, 3, MAC_ITERATIONS);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &mac_key);
    let mac = ring::hmac::sign(&key, &auth_safe);

    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(3);
            write_data_content_info(w.next(), &auth_safe);
            w.next().write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(OID_SHA256));
                        w.next().write_null();
                    });
                    w.next().write_bytes(mac.as_ref());
                });
                w.next().write_bytes(&salt);
                w.next().write_u64(MAC_ITERATIONS);
            });
        })
    }))
}

/// RFC 7292 appendix B.2 key derivation with SHA-256 (u = 32, v = 64),
/// producing one 32-byte block — all an HMAC-SHA256 key needs, so the
/// multi-block `I` update of step 6C never runs.
fn pkcs12_kdf_sha256(password: &[u8], salt: &[u8], id: u8, iterations: u64) -> [u8; 32] {
    const V: usize = 64;
    fn stretch(src: &[u8]) -> Vec<u8> {
        if src.is_empty() {
            return Vec::new();
        }
        let len = V * src.len().div_ceil(V);
        src.iter().copied().cycle().take(len).collect()
    }
    let mut input = vec![id; V];
    input.extend(stretch(salt));
    input.extend(stretch(password));
    let mut a = ring::digest::digest(&ring::digest::SHA256, &input);
    for _ in 1..iterations {
        a = ring::digest::digest(&ring::digest::SHA256, a.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(a.as_ref());
    out
}

/// RFC 7919 `ffdhe2048` group as PEM "DH PARAMETERS". mitmproxy writes a DH
/// parameter file next to its CA (its OpenSSL stack uses it for DHE suites);
/// tproxy's rustls never does finite-field DH, so a standard group is written
/// only to keep the confdir identical in shape for tools that expect the file.
pub(crate) const DHPARAM_PEM: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// DER → PEM with 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `2026-11-21 15:30:00 UTC`.
pub(crate) fn fmt_time(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_matches_the_pkcs12_definition_for_a_known_input() {
        // Cross-checked against OpenSSL: the MAC of a PFX we write verifies in
        // `openssl pkcs12` (see tests/tls_ca.rs); here, the construction itself:
        // D = 64 × ID, no salt/password blocks when both are empty.
        let mut d = vec![3u8; 64];
        let expect = ring::digest::digest(&ring::digest::SHA256, &d);
        assert_eq!(pkcs12_kdf_sha256(&[], &[], 3, 1), expect.as_ref());
        // Salt and password are each stretched to a multiple of 64 bytes.
        d.extend(std::iter::repeat_n(7u8, 64));
        d.extend([0u8, 0].iter().copied().cycle().take(64));
        let once = ring::digest::digest(&ring::digest::SHA256, &d);
        let twice = ring::digest::digest(&ring::digest::SHA256, once.as_ref());
        assert_eq!(pkcs12_kdf_sha256(&[0, 0], &[7], 3, 2), twice.as_ref());
    }
}
