//! f32 values into the file's element types, bit for bit as gguf-py encodes them (numpy's
//! `astype(float16)`, gguf-py's `quants.py` for bf16 and Q8_0).

use half::f16;

/// IEEE half, round to nearest even (numpy's `astype(np.float16)`).
pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// bfloat16 as gguf-py computes it: NaN made quiet (keeping the sign and top mantissa bits),
/// then round to nearest even on the upper 16 bits.
pub fn bf16_bits(value: f32) -> u16 {
    let mut n = value.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16) as u16
}

/// [`bf16_bits`] of every value, little-endian.
pub fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| bf16_bits(*v).to_le_bytes())
        .collect()
}

/// f32, little-endian.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Q8_0: per block of 32, `d = max|x| / 127` (f32), `q = round(x / d)` half away from zero
/// (computed as `x * (1/d)`, 0 where `d` is 0), then `d` as f16 and the 32 bytes. The length
/// must be a multiple of 32.
pub fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    debug_assert_eq!(values.len() % 32, 0);
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_quiet() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        // 1 + 3 * 2^-8 is halfway with an odd lower neighbour: up to even.
        assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // A signalling NaN whose payload sits in the low bits stays a NaN.
        let nan = bf16_bits(f32::from_bits(0x7f80_0001));
        assert_eq!(nan & 0x7f80, 0x7f80);
        assert_ne!(nan & 0x007f, 0);
    }

    #[test]
    fn q8_0_blocks_scale_by_the_largest_magnitude() {
        let mut values = vec![0f32; 64];
        values[0] = -2.54;
        values[1] = 1.0;
        values[2] = 0.005; // rounds to 0
        let bytes = q8_0_bytes(&values);
        assert_eq!(bytes.len(), 68);
        let d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        assert!((d - 0.02).abs() < 1e-4, "{d}");
        assert_eq!(bytes[2] as i8, -127);
        assert_eq!(bytes[3] as i8, 50);
        assert_eq!(bytes[4] as i8, 0);
        // An all-zero block: scale 0, quants 0.
        assert!(bytes[34..].iter().all(|b| *b == 0));
    }
}
