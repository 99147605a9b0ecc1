//! Input mutation: a seeded pseudo-random generator and byte-level mutations.
//!
//! Deterministic: the same seed, corpus and target give the same sequence of inputs (the
//! outcome feedback of the runner only depends on the target's results, which are
//! deterministic too, except where a target's own timing differs, e.g. the HTTP server).

/// SplitMix64: small, fast, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5EED_F022_0BAD_CAFE)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// A length biased towards small values: 1..=max.
    pub fn small_len(&mut self, max: usize) -> usize {
        let max = max.max(1);
        let cap = match self.below(4) {
            0..=1 => 4,
            2 => 32,
            _ => max,
        };
        1 + self.below(cap.min(max))
    }
}

/// Integers that tend to hit boundary conditions when written over a length or count field.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF_FFFF,
];

/// Mutates `data` in place with 1 to 4 stacked mutations; `other` is another corpus entry for
/// splicing, `dict` the target's tokens. The result is at most `max_len` bytes.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]], max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate_once(rng, data, other, dict);
    }
    data.truncate(max_len);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    if data.is_empty() {
        let n = rng.small_len(16);
        data.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = data.len();
    match rng.below(12) {
        // flip 1..8 bits
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
        }
        // random bytes
        1 => {
            for _ in 0..rng.small_len(8) {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
        }
        // insert random bytes
        2 => {
            let at = rng.below(len + 1);
            let n = rng.small_len(64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        // delete a range
        3 => {
            let at = rng.below(len);
            let n = rng.small_len(len - at);
            data.drain(at..at + n);
        }
        // an interesting integer of 1, 2, 4 or 8 bytes, either byte order
        4 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let bytes = if rng.chance(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let bytes = if rng.chance(2) {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let at = rng.below(len);
            for (k, b) in bytes.iter().enumerate() {
                if let Some(d) = data.get_mut(at + k) {
                    *d = *b;
                }
            }
        }
        // add or subtract a small amount to a byte or a 32-bit big-endian word
        5 => {
            let delta = 1 + rng.below(16) as u32;
            let at = rng.below(len);
            if at + 4 <= len && rng.chance(2) {
                let mut w = [0u8; 4];
                w.copy_from_slice(&data[at..at + 4]);
                let v = u32::from_be_bytes(w);
                let v = if rng.chance(2) {
                    v.wrapping_add(delta)
                } else {
                    v.wrapping_sub(delta)
                };
                data[at..at + 4].copy_from_slice(&v.to_be_bytes());
            } else if rng.chance(2) {
                data[at] = data[at].wrapping_add(delta as u8);
            } else {
                data[at] = data[at].wrapping_sub(delta as u8);
            }
        }
        // duplicate a chunk somewhere
        6 => {
            let from = rng.below(len);
            let n = rng.small_len((len - from).min(4096));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        // copy a chunk over another place
        7 => {
            let from = rng.below(len);
            let n = rng.small_len(len - from);
            let to = rng.below(len);
            let chunk = data[from..from + n].to_vec();
            for (k, b) in chunk.into_iter().enumerate() {
                if let Some(d) = data.get_mut(to + k) {
                    *d = b;
                }
            }
        }
        // splice with another corpus entry
        8 => {
            if !other.is_empty() {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
        // a dictionary token, inserted or written over
        9 | 10 => {
            if !dict.is_empty() {
                let token = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                if rng.chance(2) {
                    data.splice(at..at, token.iter().copied());
                } else {
                    for (k, b) in token.iter().enumerate() {
                        match data.get_mut(at + k) {
                            Some(d) => *d = *b,
                            None => data.push(*b),
                        }
                    }
                }
            }
        }
        // truncate
        _ => {
            let keep = rng.below(len);
            data.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut data = b"RIFF\0\0\0\0AVI LIST".to_vec();
            let mut all = Vec::new();
            for _ in 0..200 {
                mutate(&mut rng, &mut data, b"moov", &[b"idx1"], 1024);
                all.push(data.clone());
            }
            all
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn mutations_respect_the_length_cap_and_change_the_input() {
        let mut rng = Rng::new(1);
        let seed: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        let mut changed = 0;
        for _ in 0..1000 {
            let mut data = seed.clone();
            mutate(&mut rng, &mut data, &[1, 2, 3], &[b"token"], 256);
            assert!(data.len() <= 256);
            if data != seed {
                changed += 1;
            }
        }
        // A few mutations may restore the input (e.g. a bit flipped twice).
        assert!(
            changed > 950,
            "only {changed} of 1000 mutations changed the input"
        );
    }
}
