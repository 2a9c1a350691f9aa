//! Shared helpers of the codec tests: a tiny PRNG, data generators, bitwise comparisons.
#![allow(dead_code)]

/// SplitMix64: tiny, deterministic, good enough to generate test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// uniform in [0, n)
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// uniform in [0, 1)
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// standard normal (Box-Muller)
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 1 {
            -1.0
        } else {
            1.0
        }
    }
}

/// 2^k as f32 through f64 (exact, including subnormal results).
pub fn pow2(k: i32) -> f32 {
    (2.0f64).powi(k) as f32
}

pub fn next_up(v: f32) -> f32 {
    v.next_up()
}

pub fn next_down(v: f32) -> f32 {
    v.next_down()
}

/// Random normal data, one scale per 32-block drawn from a wide range.
pub fn random_normal(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    while x.len() < n {
        let scale = (2.0f64).powi(rng.below(80) as i32 - 40);
        for _ in 0..32 {
            x.push((rng.normal() * scale) as f32);
        }
    }
    x.truncate(n);
    x
}

/// Adversarial blocks: ties at every bound and one ulp around them at random exponents,
/// power-of-two amax/6 and its neighbours, subnormals, huge values, zeros and -0.0, and
/// uniformly random finite bit patterns.
pub fn adversarial(rng: &mut Rng, n: usize) -> Vec<f32> {
    const BOUNDS: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    const GRID: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let mut x = Vec::with_capacity(n);
    while x.len() < n {
        let kind = rng.below(6);
        let e = rng.below(253) as i32 - 127; // -127..=125
        let s = pow2(e);
        let mut block = [0.0f32; 32];
        match kind {
            0 => {
                // ties and neighbours at exponent e, amax 6*2^e (nudged)
                for v in block.iter_mut() {
                    let b = BOUNDS[rng.below(7) as usize] * s;
                    *v = match rng.below(4) {
                        0 => next_up(b),
                        1 => next_down(b),
                        2 => GRID[rng.below(8) as usize] * s,
                        _ => b,
                    } * rng.sign();
                }
                let amax = 6.0 * s;
                block[rng.below(32) as usize] = match rng.below(3) {
                    0 => next_up(amax),
                    1 => next_down(amax),
                    _ => amax,
                } * rng.sign();
            }
            1 => {
                // uniformly random finite bit patterns
                for v in block.iter_mut() {
                    let mut bits = rng.next_u32();
                    if (bits >> 23) & 0xFF == 0xFF {
                        bits &= !(1 << 30);
                    }
                    *v = f32::from_bits(bits);
                }
            }
            2 => {
                // subnormal magnitudes
                let width = rng.below(24);
                let k = rng.below(1 << width) as u32 + 1;
                for v in block.iter_mut() {
                    *v = f32::from_bits(rng.below(u64::from(k) + 1) as u32) * rng.sign();
                }
            }
            3 => {
                // near f32::MAX
                for v in block.iter_mut() {
                    *v = (f32::MAX * rng.unit() as f32) * rng.sign();
                }
                block[rng.below(32) as usize] = f32::MAX * rng.sign();
            }
            4 => {
                // zeros, -0.0 and maybe one value
                for v in block.iter_mut() {
                    *v = 0.0 * rng.sign();
                }
                if rng.below(2) == 0 {
                    block[rng.below(32) as usize] = GRID[rng.below(8) as usize] * s * rng.sign();
                }
            }
            _ => {
                // narrow log-uniform spread around exponent e
                for v in block.iter_mut() {
                    let k = e + rng.below(8) as i32 - 6;
                    *v = (f64::from(pow2(k.max(-149))) * (1.0 + rng.unit())) as f32 * rng.sign();
                }
            }
        }
        x.extend_from_slice(&block);
    }
    x.truncate(n);
    x
}

/// Panics with the first differing index when two f32 slices differ in any bit.
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: first difference at {i}: got {:e} ({:#010x}), want {:e} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// Panics with the first differing index when two byte slices differ.
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: first difference at {i}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}
