//! FNV-1a: a stable hash for cache keys and socket names (std's hasher may change between Rust
//! versions, and these values outlive the process).

/// FNV-1a over a stream of bytes.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.bytes(&(v.len() as u64).to_le_bytes());
        for x in v {
            self.bytes(&x.to_le_bytes());
        }
        self
    }
}

/// FNV-1a of one byte string.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv::default().bytes(bytes).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(Fnv::default().bytes(b"").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::default().bytes(b"a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::default().bytes(b"foobar").0, 0x8594_4171_f739_67e8);
    }
}
