//! Which partition a record goes to: murmur2 of the key, as Java's default partitioner and
//! librdkafka's `murmur2_random` compute it, so the relay's records land where any other
//! client of the same topic would put the same key.

/// The partition of `key` among `partitions` (at least 1).
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let partitions = partitions.max(1);
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

/// Kafka's 32-bit murmur2 (seed `0x9747b28c`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut hash = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        hash ^= u32::from(first);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own tests of `Utils.murmur2` (signed, as Java prints them).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, *expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for partitions in [1, 3, 7] {
            for key in ["", "a", "alloc-1234", "6b3c1f1e-2b9d-4d7e-9c55-0f2f0f6d9a11"] {
                let partition = partition_for(key.as_bytes(), partitions);
                assert!((0..partitions).contains(&partition));
                assert_eq!(partition, partition_for(key.as_bytes(), partitions));
            }
        }
    }
}
