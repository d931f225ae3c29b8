//! The public area of a TPM's RSA storage key — the endorsement key (EK) or
//! the storage root key (SRK) — as devices send it: a marshaled
//! `TPM2B_PUBLIC` (TPM 2.0 Part 2, §12.2.5), big-endian:
//!
//! ```text
//! size u16 | type u16 | nameAlg u16 | objectAttributes u32 | authPolicy 2B
//! | symmetric {alg u16, keyBits u16, mode u16} | scheme u16 | keyBits u16
//! | exponent u32 | unique 2B (the modulus)
//! ```
//!
//! Onramp accepts what the activation blob can be built for: RSA-2048,
//! nameAlg SHA-256, a restricted decryption key with AES-128-CFB and a NULL
//! scheme — the EK and SRK templates of every Azure SDK and of TCG's EK
//! profile. Anything else is refused with the first field that is wrong.

use std::fmt;
use std::ops::Range;

use aws_lc_rs::{digest, rsa};
use base64::{Engine as _, engine::general_purpose::STANDARD};

use super::TpmError;

pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_AES: u16 = 0x0006;
pub const TPM_ALG_KEYEDHASH: u16 = 0x0008;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_HMAC: u16 = 0x0005;
pub const TPM_ALG_CFB: u16 = 0x0043;

/// `objectAttributes` bits (TPM 2.0 Part 2, §8.3).
pub mod attributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// The SDKs' EK template: fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt.
pub const EK_ATTRIBUTES: u32 = 0x0003_00b2;
/// The SDKs' SRK template: fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt.
pub const SRK_ATTRIBUTES: u32 = 0x0003_0472;
/// The standard EK policy: PolicySecret(TPM_RH_ENDORSEMENT).
pub const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// RSA-2048.
const KEY_BITS: u16 = 2048;
const MODULUS_LEN: usize = KEY_BITS as usize / 8;

/// A validated RSA-2048 storage key (EK or SRK), ready to encrypt to.
#[derive(Clone)]
pub struct RsaPublic {
    /// The whole `TPM2B_PUBLIC`, size field included, exactly as received.
    bytes: Vec<u8>,
    attributes: u32,
    auth_policy: Range<usize>,
    exponent: u32,
    modulus: Range<usize>,
    key: rsa::PublicEncryptingKey,
}

impl PartialEq for RsaPublic {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for RsaPublic {}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublic")
            .field("attributes", &format_args!("0x{:08x}", self.attributes))
            .field("auth_policy_len", &self.auth_policy.len())
            .field("exponent", &self.exponent)
            .field("name", &hex(&self.name()))
            .finish()
    }
}

impl RsaPublic {
    /// Parses and validates a marshaled `TPM2B_PUBLIC`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader { bytes, at: 0 };
        let declared = usize::from(r.u16("the TPM2B_PUBLIC size field")?);
        let actual = bytes.len() - 2;
        if declared > actual {
            return Err(TpmError::SizeField { declared, actual });
        }
        if declared < actual {
            return Err(TpmError::TrailingBytes {
                count: actual - declared,
                after: "the TPM2B_PUBLIC (as its size field gives it)",
            });
        }
        let kind = r.u16("type")?;
        if kind != TPM_ALG_RSA {
            return Err(TpmError::Type(kind));
        }
        let name_alg = r.u16("nameAlg")?;
        if name_alg != TPM_ALG_SHA256 {
            return Err(TpmError::NameAlg(name_alg));
        }
        let attributes = r.u32("objectAttributes")?;
        // MakeCredential, ActivateCredential and Import all want a storage key.
        let storage = attributes::RESTRICTED | attributes::DECRYPT;
        if attributes & storage != storage || attributes & attributes::SIGN != 0 {
            return Err(TpmError::Attributes(attributes));
        }
        let auth_policy = r.sized("authPolicy")?;
        if !matches!(auth_policy.len(), 0 | 32) {
            return Err(TpmError::AuthPolicy(auth_policy.len()));
        }
        let alg = r.u16("parameters.symmetric.algorithm")?;
        if alg != TPM_ALG_AES {
            return Err(TpmError::Symmetric {
                alg,
                detail: String::new(),
            });
        }
        let sym_bits = r.u16("parameters.symmetric.keyBits")?;
        let mode = r.u16("parameters.symmetric.mode")?;
        if sym_bits != 128 || mode != TPM_ALG_CFB {
            return Err(TpmError::Symmetric {
                alg,
                detail: format!(
                    ", keyBits {sym_bits}, mode 0x{mode:04x} ({})",
                    super::alg_name(mode)
                ),
            });
        }
        let scheme = r.u16("parameters.scheme")?;
        if scheme != TPM_ALG_NULL {
            return Err(TpmError::Scheme(scheme));
        }
        let key_bits = r.u16("parameters.keyBits")?;
        if key_bits != KEY_BITS {
            return Err(TpmError::KeyBits(key_bits));
        }
        let exponent = r.u32("parameters.exponent")?;
        let modulus = r.sized("unique (the modulus)")?;
        if r.at != bytes.len() {
            return Err(TpmError::TrailingBytes {
                count: bytes.len() - r.at,
                after: "the public area's unique field, inside the TPM2B_PUBLIC",
            });
        }
        if modulus.len() != MODULUS_LEN {
            return Err(TpmError::ModulusLength(modulus.len()));
        }
        let n = &bytes[modulus.clone()];
        if n[0] & 0x80 == 0 {
            return Err(TpmError::Modulus("its top bit is clear"));
        }
        if n[MODULUS_LEN - 1] & 1 == 0 {
            return Err(TpmError::Modulus("it is even"));
        }
        // 0 stands for the default, 65537 (Part 2, §12.2.3.5).
        let e = if exponent == 0 { 65537 } else { exponent };
        if e < 3 || e.is_multiple_of(2) {
            return Err(TpmError::Exponent(exponent));
        }
        let e = e.to_be_bytes();
        let e = &e[e.iter().position(|b| *b != 0).unwrap_or(3)..];
        let key: rsa::PublicEncryptingKey = rsa::PublicKeyComponents { n, e }
            .try_into()
            .map_err(|_| TpmError::Modulus("the RSA library refused it"))?;
        Ok(Self {
            bytes: bytes.to_vec(),
            attributes,
            auth_policy,
            exponent,
            modulus,
            key,
        })
    }

    /// Parses the base64 text of a marshaled `TPM2B_PUBLIC` (JSON and the CLI carry it so).
    pub fn from_base64(text: &str) -> Result<Self, TpmError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| TpmError::Base64)?;
        Self::parse(&bytes)
    }

    /// Marshals an RSA-2048 storage key with the SDK templates' parameters
    /// (AES-128-CFB, NULL scheme, exponent 0) around `modulus`.
    pub fn encode(attributes: u32, auth_policy: &[u8], modulus: &[u8]) -> Result<Self, TpmError> {
        let mut area = Vec::with_capacity(32 + auth_policy.len() + modulus.len());
        area.extend_from_slice(&TPM_ALG_RSA.to_be_bytes());
        area.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        area.extend_from_slice(&attributes.to_be_bytes());
        put_sized(&mut area, auth_policy)?;
        for v in [TPM_ALG_AES, 128, TPM_ALG_CFB, TPM_ALG_NULL, KEY_BITS] {
            area.extend_from_slice(&v.to_be_bytes());
        }
        area.extend_from_slice(&0u32.to_be_bytes());
        put_sized(&mut area, modulus)?;
        let mut bytes = Vec::with_capacity(area.len() + 2);
        put_sized(&mut bytes, &area)?;
        Self::parse(&bytes)
    }

    /// An endorsement key with the SDKs' template around `modulus`.
    pub fn endorsement_key(modulus: &[u8]) -> Result<Self, TpmError> {
        Self::encode(EK_ATTRIBUTES, &EK_POLICY, modulus)
    }

    /// A storage root key with the SDKs' template around `modulus`.
    pub fn storage_root_key(modulus: &[u8]) -> Result<Self, TpmError> {
        Self::encode(SRK_ATTRIBUTES, &[], modulus)
    }

    /// The marshaled `TPM2B_PUBLIC`, size field included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The base64 text devices send.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    /// The `TPMT_PUBLIC` inside the size field.
    pub fn public_area(&self) -> &[u8] {
        &self.bytes[2..]
    }

    pub fn attributes(&self) -> u32 {
        self.attributes
    }

    pub fn auth_policy(&self) -> &[u8] {
        &self.bytes[self.auth_policy.clone()]
    }

    /// The exponent field as marshaled (0 means 65537).
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// The 256-byte modulus, big-endian.
    pub fn modulus(&self) -> &[u8] {
        &self.bytes[self.modulus.clone()]
    }

    /// The TPM `Name` of the key: nameAlg ‖ SHA-256(TPMT_PUBLIC).
    pub fn name(&self) -> [u8; 34] {
        name_of(self.public_area())
    }

    /// The registration ID the C and Node SDKs use when the application gives
    /// none: lower-case base32 of SHA-256 over the whole `TPM2B_PUBLIC`,
    /// without padding (52 characters).
    pub fn registration_id(&self) -> String {
        let hash = digest::digest(&digest::SHA256, &self.bytes);
        data_encoding::BASE32_NOPAD
            .encode(hash.as_ref())
            .to_ascii_lowercase()
    }

    /// The key's hash as a TPM enrollment group's allow list names it:
    /// lower-case hex SHA-256 over the whole `TPM2B_PUBLIC` (what `sha256sum`
    /// prints for the file `tpm2_readpublic -f tss` writes).
    pub fn sha256_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(digest::digest(&digest::SHA256, &self.bytes).as_ref())
    }

    /// RSA-OAEP with SHA-256 (hash and MGF1) and the TPM's label, whose
    /// trailing NUL the caller includes.
    pub(crate) fn encrypt(&self, plaintext: &[u8], label: &[u8]) -> Result<Vec<u8>, TpmError> {
        let key = rsa::OaepPublicEncryptingKey::new(self.key.clone())
            .map_err(|_| TpmError::Crypto("RSA-OAEP key"))?;
        let mut out = vec![0u8; key.ciphertext_size()];
        let len = key
            .encrypt(
                &rsa::OAEP_SHA256_MGF1SHA256,
                plaintext,
                &mut out,
                Some(label),
            )
            .map_err(|_| TpmError::Crypto("RSA-OAEP encryption"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// The TPM `Name` of a public area with nameAlg SHA-256.
pub(crate) fn name_of(public_area: &[u8]) -> [u8; 34] {
    let mut name = [0u8; 34];
    name[..2].copy_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    name[2..].copy_from_slice(digest::digest(&digest::SHA256, public_area).as_ref());
    name
}

/// Appends a TPM "2B": a big-endian u16 length, then the bytes.
pub(crate) fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), TpmError> {
    let len = u16::try_from(bytes.len()).map_err(|_| TpmError::Crypto("a 2B field over 64 KiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads big-endian fields; a short read names the field it fell in.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], TpmError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(TpmError::Truncated {
                what,
                len: self.bytes.len(),
            })?;
        let field = &self.bytes[self.at..end];
        self.at = end;
        Ok(field)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TpmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TpmError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 2B field: its length, then that many bytes; returns where they lie.
    fn sized(&mut self, what: &'static str) -> Result<Range<usize>, TpmError> {
        let len = usize::from(self.u16(what)?);
        let start = self.at;
        self.take(len, what)?;
        Ok(start..self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exported from swtpm with the SDKs' templates (`tests/data/tpm/tpm-keys.sh`).
    const EK: &[u8] = include_bytes!("../../tests/data/tpm/ek.pub");
    const SRK: &[u8] = include_bytes!("../../tests/data/tpm/srk.pub");

    fn with(bytes: &[u8], at: usize, patch: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[at..at + patch.len()].copy_from_slice(patch);
        out
    }

    #[test]
    fn keys_exported_from_a_tpm_parse() {
        let ek = RsaPublic::parse(EK).unwrap();
        assert_eq!(ek.as_bytes().len(), 316);
        assert_eq!(ek.attributes(), EK_ATTRIBUTES);
        assert_eq!(ek.auth_policy(), EK_POLICY);
        assert_eq!(ek.exponent(), 0);
        assert_eq!(ek.modulus().len(), 256);
        // Computed apart from this code (Python: base32 of hashlib.sha256).
        assert_eq!(
            ek.registration_id(),
            "crekzc6wf2zwfd4kciiber6r3dzz3fujlseowypqukboqfwiqlya"
        );
        assert_eq!(
            hex(&ek.name()),
            "000b4b5d57f7c2b1186a255ce04bf1de349c89cb4145f25e5bf0c317c4c54cc5e118"
        );
        let srk = RsaPublic::parse(SRK).unwrap();
        assert_eq!(srk.as_bytes().len(), 284);
        assert_eq!(srk.attributes(), SRK_ATTRIBUTES);
        assert!(srk.auth_policy().is_empty());
        assert_eq!(
            srk.registration_id(),
            "n7oozhctmwdfo2itajrzmxyhupkrz52l7vhlpxr2vv5rapdkn2oq"
        );
        assert_eq!(
            hex(&srk.name()),
            "000b59f4a5e0b6e4a5b79d72d60b7b25c34a3a60ce3c1def6c370b77ab2f494c3b8a"
        );
        assert_eq!(RsaPublic::from_base64(&ek.to_base64()).unwrap(), ek);
        // The SDKs' wire form begins so (device protocol notes §5.1).
        assert!(ek.to_base64().starts_with("AToAAQALAAMAsgAg"));
    }

    #[test]
    fn the_encoder_reproduces_the_tpms_marshaling() {
        let ek = RsaPublic::parse(EK).unwrap();
        let srk = RsaPublic::parse(SRK).unwrap();
        assert_eq!(
            RsaPublic::endorsement_key(ek.modulus()).unwrap().as_bytes(),
            EK
        );
        assert_eq!(
            RsaPublic::storage_root_key(srk.modulus())
                .unwrap()
                .as_bytes(),
            SRK
        );
    }

    #[test]
    fn each_fault_is_named() {
        let n = RsaPublic::parse(EK).unwrap().modulus().to_vec();
        let mut appended = EK.to_vec();
        appended.push(0);
        let mut inner_trailing = appended.clone();
        inner_trailing[..2].copy_from_slice(&315u16.to_be_bytes());
        let mut odd_modulus = n.clone();
        odd_modulus.pop();
        let cases: Vec<(Vec<u8>, TpmError, &str)> = vec![
            (
                vec![],
                TpmError::Truncated {
                    what: "the TPM2B_PUBLIC size field",
                    len: 0,
                },
                "ends after 0 bytes, inside the TPM2B_PUBLIC size field",
            ),
            (
                EK[..100].to_vec(),
                TpmError::SizeField {
                    declared: 314,
                    actual: 98,
                },
                "size field of 314 bytes, but 98 bytes follow it",
            ),
            (
                appended,
                TpmError::TrailingBytes {
                    count: 1,
                    after: "the TPM2B_PUBLIC (as its size field gives it)",
                },
                "1 bytes after the end of the TPM2B_PUBLIC",
            ),
            (
                inner_trailing,
                TpmError::TrailingBytes {
                    count: 1,
                    after: "the public area's unique field, inside the TPM2B_PUBLIC",
                },
                "after the end of the public area's unique field",
            ),
            (
                with(EK, 2, &[0x00, 0x23]),
                TpmError::Type(0x23),
                "type 0x0023 (ECC); an RSA key (type 0x0001) is required",
            ),
            (
                with(EK, 4, &[0x00, 0x04]),
                TpmError::NameAlg(4),
                "nameAlg 0x0004 (SHA-1); SHA-256 (0x000b) is required",
            ),
            (
                with(EK, 6, &0x0001_00b2u32.to_be_bytes()),
                TpmError::Attributes(0x0001_00b2),
                "objectAttributes 0x000100b2; a storage key",
            ),
            (
                with(EK, 6, &0x0007_00b2u32.to_be_bytes()),
                TpmError::Attributes(0x0007_00b2),
                "(restricted and decrypt, not sign)",
            ),
            (
                with(EK, 46, &256u16.to_be_bytes()),
                TpmError::Symmetric {
                    alg: 6,
                    detail: ", keyBits 256, mode 0x0043 (CFB)".into(),
                },
                "symmetric algorithm 0x0006 (AES), keyBits 256, mode 0x0043 (CFB); AES-128 in CFB mode",
            ),
            (
                with(EK, 44, &[0x00, 0x10]),
                TpmError::Symmetric {
                    alg: 0x10,
                    detail: String::new(),
                },
                "symmetric algorithm 0x0010 (NULL);",
            ),
            (
                with(EK, 50, &[0x00, 0x17]),
                TpmError::Scheme(0x17),
                "scheme 0x0017 (OAEP)",
            ),
            (
                with(EK, 52, &3072u16.to_be_bytes()),
                TpmError::KeyBits(3072),
                "keyBits 3072; an RSA-2048 key is required",
            ),
            (
                with(EK, 54, &2u32.to_be_bytes()),
                TpmError::Exponent(2),
                "exponent 2, which is not a valid RSA public exponent",
            ),
            (
                with(EK, 58, &[0x01, 0x01]),
                TpmError::Truncated {
                    what: "unique (the modulus)",
                    len: 316,
                },
                "ends after 316 bytes, inside unique (the modulus)",
            ),
            (
                with(EK, 60, &[0x7f]),
                TpmError::Modulus("its top bit is clear"),
                "not a 2048-bit RSA modulus (its top bit is clear)",
            ),
            (
                with(EK, 315, &[0x02]),
                TpmError::Modulus("it is even"),
                "(it is even)",
            ),
        ];
        for (bytes, error, message) in cases {
            let got = RsaPublic::parse(&bytes).unwrap_err();
            assert_eq!(got, error, "{message}");
            assert!(got.to_string().contains(message), "{got}");
        }
        // Faults that need a different layout, made with the encoder.
        assert_eq!(
            RsaPublic::encode(EK_ATTRIBUTES, &[1; 20], &n).unwrap_err(),
            TpmError::AuthPolicy(20)
        );
        assert_eq!(
            RsaPublic::storage_root_key(&odd_modulus).unwrap_err(),
            TpmError::ModulusLength(255)
        );
        assert_eq!(
            RsaPublic::from_base64("AToAAQ==").unwrap_err(),
            TpmError::SizeField {
                declared: 314,
                actual: 2
            }
        );
        assert_eq!(
            RsaPublic::from_base64("not base64!").unwrap_err(),
            TpmError::Base64
        );
    }

    #[test]
    fn any_prefix_of_a_key_is_refused_without_a_panic() {
        for len in 0..EK.len() {
            let mut short = EK[..len].to_vec();
            if len >= 2 {
                // Keep the size field consistent so the walk reaches each field.
                short[..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
            }
            assert!(RsaPublic::parse(&short).is_err(), "{len} bytes");
        }
    }
}
