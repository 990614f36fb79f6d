//! SCRAM channel binding of type `tls-server-end-point` (RFC 5929, section
//! 4.1): the hash of the server's end-entity certificate, with the hash of
//! the certificate's own signature algorithm, except that MD5 and SHA-1
//! become SHA-256. Binding the SCRAM exchange to it means a TLS
//! man-in-the-middle, even one whose certificate was accepted because
//! `pg_ssl_verify` is off, cannot relay the login: its certificate hashes
//! differently from the one the server binds to.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The hash a certificate's signature algorithm calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The binding data for the server certificate `der`, or `None` when its
/// signature algorithm names no hash we know (Ed25519, RSASSA-PSS, or
/// a certificate that does not parse): SCRAM then goes on without binding.
pub fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(der)? {
        Hash::Sha224 => Sha224::digest(der).to_vec(),
        Hash::Sha256 => Sha256::digest(der).to_vec(),
        Hash::Sha384 => Sha384::digest(der).to_vec(),
        Hash::Sha512 => Sha512::digest(der).to_vec(),
    })
}

/// Signature algorithm OIDs (DER content bytes) and the hash each binds with.
const ALGORITHMS: &[(&[u8], Hash)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 (RFC 5929).
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], Hash::Sha384),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], Hash::Sha512),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e], Hash::Sha224),
    // ecdsa-with-SHA1: SHA-256; ecdsa-with-SHA224/256/384/512.
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01], Hash::Sha224),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], Hash::Sha384),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], Hash::Sha512),
];

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signature }`, `AlgorithmIdentifier ::= SEQUENCE {
/// algorithm OBJECT IDENTIFIER, parameters }`: the hash of the algorithm.
fn signature_hash(der: &[u8]) -> Option<Hash> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (certificate, _) = element(der, SEQUENCE)?;
    let (_tbs, rest) = element(certificate, SEQUENCE)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, _) = element(algorithm, OID)?;
    ALGORITHMS.iter().find(|(known, _)| *known == oid).map(|(_, hash)| *hash)
}

/// The content of the DER element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of `tag` with `content` (short or long length form).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate shape: a tbsCertificate of `tbs_len` bytes, the
    /// algorithm `oid`, an empty signature.
    fn certificate(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let mut body = tlv(0x30, &vec![0x02; tbs_len]);
        let mut algorithm = tlv(0x06, oid);
        algorithm.extend_from_slice(&[0x05, 0x00]);
        body.extend(tlv(0x30, &algorithm));
        body.extend(tlv(0x03, &[0x00]));
        tlv(0x30, &body)
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let rsa_sha256 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let rsa_sha1 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        let ecdsa_sha384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let ecdsa_sha512 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
        for tbs_len in [10, 300] {
            let c = certificate(&rsa_sha256, tbs_len);
            assert_eq!(tls_server_end_point(&c), Some(Sha256::digest(&c).to_vec()));
            let c = certificate(&rsa_sha1, tbs_len);
            assert_eq!(tls_server_end_point(&c), Some(Sha256::digest(&c).to_vec()), "sha1 binds with sha-256");
            let c = certificate(&ecdsa_sha384, tbs_len);
            assert_eq!(tls_server_end_point(&c).map(|h| h.len()), Some(48));
            assert_eq!(tls_server_end_point(&c), Some(Sha384::digest(&c).to_vec()));
            let c = certificate(&ecdsa_sha512, tbs_len);
            assert_eq!(tls_server_end_point(&c), Some(Sha512::digest(&c).to_vec()));
        }
    }

    #[test]
    fn unknown_algorithms_and_garbage_bind_nothing() {
        let ed25519 = [0x2b, 0x65, 0x70];
        let rsa_pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        assert_eq!(tls_server_end_point(&certificate(&ed25519, 10)), None);
        assert_eq!(tls_server_end_point(&certificate(&rsa_pss, 10)), None);
        let good = certificate(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], 40);
        for cut in 0..good.len() {
            assert_eq!(tls_server_end_point(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x80]), None);
    }
}
