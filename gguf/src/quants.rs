//! Tensor types and their dequantization to f32.
//!
//! Each block format is decoded in the order of operations of the `gguf` Python package's
//! `gguf.quants.dequantize` (which follows ggml's C): scales widened from f16 exactly, products
//! and sums in f32, no fused multiply-add. The results are therefore bit for bit the same, which
//! the tests check on every tensor of a real file and on files of each type that package wrote.

use half::f16;

/// Elements per block of the K-quants.
const QK_K: usize = 256;

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32: an f16 scale and 32 nibbles, offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 nibbles.
    Q4_1,
    /// Blocks of 32: an f16 scale, 32 five-bit values, offset by 16.
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 32 five-bit values.
    Q5_1,
    /// Super-blocks of 256: 8 sub-blocks with six-bit scales and minimums, nibbles.
    Q4K,
    /// Super-blocks of 256: as Q4_K with a fifth bit.
    Q5K,
    /// Super-blocks of 256: 16 sub-blocks with 8-bit scales, six-bit values.
    Q6K,
    /// A type GGUF defines that twin does not read (its number).
    Unknown(u32),
}

impl TensorType {
    /// The type of GGUF's type number.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            6 => TensorType::Q5_0,
            7 => TensorType::Q5_1,
            8 => TensorType::Q8_0,
            12 => TensorType::Q4K,
            13 => TensorType::Q5K,
            14 => TensorType::Q6K,
            30 => TensorType::Bf16,
            other => TensorType::Unknown(other),
        }
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::Bf16 => (1, 2),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q5_0 => (32, 22),
            TensorType::Q5_1 => (32, 24),
            TensorType::Q4K => (256, 144),
            TensorType::Q5K => (256, 176),
            TensorType::Q6K => (256, 210),
            TensorType::Unknown(_) => (1, 0),
        }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q5_0 => "Q5_0",
            TensorType::Q5_1 => "Q5_1",
            TensorType::Q4K => "Q4_K",
            TensorType::Q5K => "Q5_K",
            TensorType::Q6K => "Q6_K",
            TensorType::Unknown(id) => {
                // The names of the types GGUF defines that we do not read, for the error.
                let known = [
                    (9, "Q8_1"),
                    (10, "Q2_K"),
                    (11, "Q3_K"),
                    (15, "Q8_K"),
                    (16, "IQ2_XXS"),
                    (17, "IQ2_XS"),
                    (18, "IQ3_XXS"),
                    (19, "IQ1_S"),
                    (20, "IQ4_NL"),
                    (21, "IQ3_S"),
                    (22, "IQ2_S"),
                    (23, "IQ4_XS"),
                    (24, "I8"),
                    (25, "I16"),
                    (26, "I32"),
                    (27, "I64"),
                    (28, "F64"),
                    (29, "IQ1_M"),
                    (34, "TQ1_0"),
                    (35, "TQ2_0"),
                    (39, "MXFP4"),
                ];
                return match known.iter().find(|(k, _)| k == id) {
                    Some((_, name)) => write!(f, "{name} ({id})"),
                    None => write!(f, "number {id} (unknown to GGUF)"),
                };
            }
        };
        f.write_str(name)
    }
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// The tensor's elements as f32, or `None` for a type twin does not read. `raw` holds whole
/// blocks (the reader checked its length).
pub fn dequantize(kind: TensorType, raw: &[u8]) -> Option<Vec<f32>> {
    let (block, size) = kind.block();
    let (block, size) = (block as usize, size as usize);
    if size == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() / size * block);
    for b in raw.chunks_exact(size) {
        match kind {
            TensorType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            TensorType::F16 => out.push(half(b)),
            TensorType::Bf16 => out.push(f32::from_bits(
                u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
            )),
            TensorType::Q8_0 => {
                let d = half(b);
                out.extend(b[2..34].iter().map(|q| f32::from(*q as i8) * d));
            }
            TensorType::Q4_0 => {
                let d = half(b);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| d * f32::from((q & 0x0F) as i8 - 8)));
                out.extend(qs.iter().map(|q| d * f32::from((q >> 4) as i8 - 8)));
            }
            TensorType::Q4_1 => {
                let (d, m) = (half(b), half(&b[2..]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| d * f32::from(q & 0x0F) + m));
                out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
            }
            TensorType::Q5_0 => {
                let d = half(b);
                let q = five_bit_quants(&b[2..22]);
                out.extend(q.iter().map(|q| d * f32::from(*q as i8 - 16)));
            }
            TensorType::Q5_1 => {
                let (d, m) = (half(b), half(&b[2..]));
                let q = five_bit_quants(&b[4..24]);
                out.extend(q.iter().map(|q| d * f32::from(*q) + m));
            }
            TensorType::Q4K | TensorType::Q5K => {
                let (d, dmin) = (half(b), half(&b[2..]));
                let (scales, mins) = k_scale_min(&b[4..16]);
                let (qh, qs) = if kind == TensorType::Q5K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for sub in 0..8 {
                    let ds = d * f32::from(scales[sub]);
                    let dm = dmin * f32::from(mins[sub]);
                    let bytes = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
                    for (l, q) in bytes.iter().enumerate() {
                        let low = if sub % 2 == 0 { q & 0x0F } else { q >> 4 };
                        let high = qh.map_or(0, |qh| (qh[l] >> sub) & 1);
                        out.push(ds * f32::from(low | (high << 4)) - dm);
                    }
                }
            }
            TensorType::Q6K => {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let scales = &b[192..208];
                let d = half(&b[208..]);
                for e in 0..QK_K {
                    let (h, rest) = (e / 128, e % 128);
                    let low = {
                        let byte = ql[64 * h + rest % 64];
                        if rest < 64 {
                            byte & 0x0F
                        } else {
                            byte >> 4
                        }
                    };
                    let high = (qh[32 * h + rest % 32] >> (2 * (rest / 32))) & 0x03;
                    let q = (low | (high << 4)) as i8 - 32;
                    let scale = d * f32::from(scales[e / 16] as i8);
                    out.push(scale * f32::from(q));
                }
            }
            TensorType::Unknown(_) => return None,
        }
    }
    Some(out)
}

/// The 32 unsigned five-bit values of a Q5_0 or Q5_1 block from its 4 bytes of high bits and
/// 16 bytes of nibbles (low nibbles are elements 0..16, high nibbles 16..32).
fn five_bit_quants(b: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let qs = &b[4..20];
    std::array::from_fn(|j| {
        let low = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        low | ((((qh >> j) & 1) as u8) << 4)
    })
}

/// The eight six-bit scales and minimums of a Q4_K or Q5_K super-block, from their 12 bytes.
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = s[j] & 0x3F;
        mins[j] = s[4 + j] & 0x3F;
        scales[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mins[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (scales, mins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_scales_signed_bytes() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = 4;
        block[3] = (-6i8) as u8;
        let values = dequantize(TensorType::Q8_0, &block).unwrap_or_default();
        assert_eq!(values.len(), 32);
        assert_eq!(&values[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn q4_0_puts_low_nibbles_first() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        block[2] = 0xA3; // element 0 = 3 - 8, element 16 = 10 - 8
        let values = dequantize(TensorType::Q4_0, &block).unwrap_or_default();
        assert_eq!((values[0], values[16], values[1]), (-5.0, 2.0, -8.0));
    }

    #[test]
    fn unknown_types_are_refused_by_name() {
        assert_eq!(dequantize(TensorType::from_id(11), &[0; 8]), None);
        assert_eq!(TensorType::from_id(11).to_string(), "Q3_K (11)");
        assert_eq!(
            TensorType::from_id(99).to_string(),
            "number 99 (unknown to GGUF)"
        );
    }
}
