//! KDFa, the TPM's key derivation function (TPM 2.0 Part 1, §11.4.10.2):
//! SP 800-108 in counter mode with HMAC-SHA256.

use aws_lc_rs::hmac;

/// Derives `bits` bits from `key`:
/// `HMAC-SHA256(key, BE32(i) ‖ label ‖ 0x00 ‖ context_u ‖ context_v ‖ BE32(bits))`
/// for i = 1, 2, …, keeping the leftmost `bits`. When `bits` is not a
/// multiple of 8, the unused high bits of the first byte are cleared, as the
/// TPM does.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let len = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(len);
    if !bits.is_multiple_of(8)
        && let Some(first) = out.first_mut()
    {
        *first &= (1u8 << (bits % 8)) - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_reference_tpm_self_test_vector() {
        // The SHA-256 KDFa vector the TPM reference implementation checks at
        // start-up (KdfTestData.h; libtpms, which swtpm runs, has it too).
        let key = [
            0x27, 0x1F, 0xA0, 0x8B, 0xBD, 0xC5, 0x06, 0x0E, 0xC3, 0xDF, 0xA9, 0x28, 0xFF, 0x9B,
            0x73, 0x12, 0x3A, 0x12, 0xDA, 0x0C,
        ];
        let context_u = [0xCE, 0x24, 0x4F, 0x39, 0x5D, 0xCA, 0x73, 0x91];
        let context_v = [0xDA, 0x50, 0x40, 0x31, 0xDD, 0xF1, 0x2E, 0x83];
        let out = kdfa(&key, "KDFSELFTESTLABEL", &context_u, &context_v, 160);
        assert_eq!(hex(&out), "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4");
    }

    #[test]
    fn longer_outputs_continue_the_counter_and_odd_sizes_mask_the_first_byte() {
        let long = kdfa(b"seed", "STORAGE", b"name", b"", 512);
        assert_eq!(long.len(), 64);
        // BE32(bits) is in every block: a longer output does not extend a shorter one.
        assert_ne!(long[..32], kdfa(b"seed", "STORAGE", b"name", b"", 256)[..]);
        let odd = kdfa(b"seed", "X", b"", b"", 12);
        assert_eq!(odd.len(), 2);
        assert!(odd[0] < 0x10, "{odd:?}");
    }
}
