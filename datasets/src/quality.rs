//! What a sample must be to be kept: within length limits, not a copy of one kept before, and
//! not a near copy (MinHash over word 3-grams, with locality-sensitive hashing so each new
//! sample is compared only with the few it may resemble).
//!
//! Our own MinHash, not a crate's: signatures must be the same on every machine and in every
//! release (they decide which samples a dataset keeps, and datasets are reproducible), so the
//! hash functions are fixed here: FNV-1a over each shingle, then 128 fixed multiply-add
//! permutations.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Length limits, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthLimits {
    /// Shortest instruction.
    pub min_instruction: usize,
    /// Longest instruction.
    pub max_instruction: usize,
    /// Shortest answer.
    pub min_answer: usize,
    /// Longest answer.
    pub max_answer: usize,
}

/// Why a length check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthVerdict {
    /// Within limits.
    Fits,
    /// Something is too short.
    TooShort,
    /// Something is too long.
    TooLong,
}

impl LengthLimits {
    /// Check an instruction and its answers.
    pub fn check(&self, instruction: &str, answers: &[&str]) -> LengthVerdict {
        let i = instruction.trim().chars().count();
        if i < self.min_instruction {
            return LengthVerdict::TooShort;
        }
        if i > self.max_instruction {
            return LengthVerdict::TooLong;
        }
        for answer in answers {
            let n = answer.trim().chars().count();
            if n < self.min_answer {
                return LengthVerdict::TooShort;
            }
            if n > self.max_answer {
                return LengthVerdict::TooLong;
            }
        }
        LengthVerdict::Fits
    }
}

/// Lower case, words of letters and digits only, one space between: what "the same text" means.
pub fn normalize(text: &str) -> String {
    words(text).join(" ")
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

const PERMUTATIONS: usize = 128;
const BANDS: usize = 32;
const ROWS: usize = PERMUTATIONS / BANDS;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A text's MinHash signature.
pub type Signature = [u64; PERMUTATIONS];

/// Computes signatures with fixed permutations.
#[derive(Debug, Clone)]
pub struct MinHasher {
    permutations: Vec<(u64, u64)>,
}

impl Default for MinHasher {
    fn default() -> Self {
        let mut state = 0x7477_696e_u64; // fixed: signatures never change
        let permutations = (0..PERMUTATIONS)
            .map(|_| (splitmix64(&mut state) | 1, splitmix64(&mut state)))
            .collect();
        Self { permutations }
    }
}

impl MinHasher {
    /// The signature of `text`'s word 3-grams (the whole text when it has fewer words).
    pub fn signature(&self, text: &str) -> Signature {
        let words = words(text);
        let shingles: HashSet<u64> = if words.len() < 3 {
            HashSet::from([fnv1a(words.join(" ").as_bytes())])
        } else {
            words
                .windows(3)
                .map(|w| fnv1a(w.join(" ").as_bytes()))
                .collect()
        };
        let mut signature = [u64::MAX; PERMUTATIONS];
        for shingle in shingles {
            for (slot, (a, b)) in signature.iter_mut().zip(&self.permutations) {
                *slot = (*slot).min(a.wrapping_mul(shingle).wrapping_add(*b));
            }
        }
        signature
    }
}

/// The estimated Jaccard similarity of the texts of two signatures.
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / PERMUTATIONS as f64
}

/// The kept texts: a new one is refused if it is the same as one of them or near it.
#[derive(Debug)]
pub struct Deduplicator {
    threshold: f64,
    hasher: MinHasher,
    exact: HashSet<String>,
    signatures: Vec<Signature>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

/// Why a text was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Duplicate {
    /// The same as a kept text, once normalised.
    Exact,
    /// Near a kept text: their estimated similarity.
    Near(f64),
}

impl Deduplicator {
    /// Refusing texts at least `threshold` similar to a kept one (above 1.0: exact copies only).
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            hasher: MinHasher::default(),
            exact: HashSet::new(),
            signatures: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    /// Keep `text` unless it duplicates a kept one; `key` is what must differ exactly (the text
    /// with its instruction, say), `text` what must not be near.
    pub fn admit(&mut self, key: &str, text: &str) -> Result<(), Duplicate> {
        let key = normalize(key);
        if self.exact.contains(&key) {
            return Err(Duplicate::Exact);
        }
        let signature = self.hasher.signature(text);
        if self.threshold <= 1.0 {
            let mut seen = HashSet::new();
            for band in 0..BANDS {
                let bucket = band_hash(&signature, band);
                for &other in self.buckets.get(&(band, bucket)).into_iter().flatten() {
                    if seen.insert(other) {
                        let s = similarity(&signature, &self.signatures[other]);
                        if s >= self.threshold {
                            return Err(Duplicate::Near(s));
                        }
                    }
                }
            }
        }
        let index = self.signatures.len();
        for band in 0..BANDS {
            self.buckets
                .entry((band, band_hash(&signature, band)))
                .or_default()
                .push(index);
        }
        self.signatures.push(signature);
        self.exact.insert(key);
        Ok(())
    }
}

fn band_hash(signature: &Signature, band: usize) -> u64 {
    let rows = &signature[band * ROWS..(band + 1) * ROWS];
    let mut bytes = Vec::with_capacity(ROWS * 8);
    for r in rows {
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    fnv1a(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Kafka keeps the events of one key in order, partition by partition, \
        and consumers commit their offsets after handling the events they read from it.";

    #[test]
    fn copies_and_near_copies_are_refused_and_different_texts_kept() {
        let mut d = Deduplicator::new(0.8);
        assert_eq!(d.admit(TEXT, TEXT), Ok(()));
        let shouted = TEXT.to_uppercase();
        assert_eq!(d.admit(&shouted, &shouted), Err(Duplicate::Exact));
        let near = format!("{TEXT} Always.");
        assert!(matches!(d.admit(&near, &near), Err(Duplicate::Near(s)) if s >= 0.8));
        let other = "Rust gives memory safety without a garbage collector; the borrow checker \
            enforces ownership when the program is compiled.";
        assert_eq!(d.admit(other, other), Ok(()));
        // With the threshold off, only exact copies go.
        let mut exact_only = Deduplicator::new(1.1);
        assert_eq!(exact_only.admit(TEXT, TEXT), Ok(()));
        assert_eq!(exact_only.admit(&near, &near), Ok(()));
    }

    #[test]
    fn signatures_are_fixed() {
        // Datasets are reproducible across releases only if this never changes.
        let s = MinHasher::default().signature("one two three four");
        assert_eq!(
            similarity(&s, &MinHasher::default().signature("One, two; three four!")),
            1.0
        );
        let similar = MinHasher::default().signature("one two three five");
        let sim = similarity(&s, &similar);
        assert!(sim > 0.2 && sim < 0.8, "{sim}");
    }

    #[test]
    fn lengths_are_checked_on_every_answer() {
        let limits = LengthLimits {
            min_instruction: 5,
            max_instruction: 50,
            min_answer: 10,
            max_answer: 100,
        };
        assert_eq!(
            limits.check("Explain logs", &["A log is an ordered list."]),
            LengthVerdict::Fits
        );
        assert_eq!(
            limits.check("Hi", &["A log is an ordered list."]),
            LengthVerdict::TooShort
        );
        assert_eq!(
            limits.check("Explain logs", &["A log is an ordered list.", "short"]),
            LengthVerdict::TooShort
        );
        assert_eq!(
            limits.check("Explain logs", &[&"x".repeat(101)]),
            LengthVerdict::TooLong
        );
    }
}
