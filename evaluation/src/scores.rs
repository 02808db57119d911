//! How close a generated answer is to the author's: ROUGE-L, the ratio of their lengths, and
//! the cosine similarity of their embeddings.

/// Words as `rouge-score` tokenises them (its default tokenizer, without stemming): lowercased,
/// runs of ASCII letters and digits, everything else a separator (so `café` counts as `caf`,
/// as it does there).
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-L's F-measure of `candidate` against `reference`: the longest common subsequence of
/// their words over each one's length (precision, recall), combined harmonically; 0 when
/// either has no word. What `rouge_score.rouge_scorer.RougeScorer(["rougeL"])` reports as
/// `fmeasure`.
pub fn rouge_l(reference: &str, candidate: &str) -> f64 {
    let reference = rouge_tokens(reference);
    let candidate = rouge_tokens(candidate);
    if reference.is_empty() || candidate.is_empty() {
        return 0.0;
    }
    let lcs = lcs_length(&reference, &candidate) as f64;
    let precision = lcs / candidate.len() as f64;
    let recall = lcs / reference.len() as f64;
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Length of the longest common subsequence, in one row of the table.
fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Words of the generated answer over words of the reference (whitespace-separated): 1 writes
/// as long as the author, below 1 shorter. `None` when the reference has no word.
pub fn length_ratio(reference: &str, candidate: &str) -> Option<f64> {
    let reference = reference.split_whitespace().count();
    if reference == 0 {
        return None;
    }
    Some(candidate.split_whitespace().count() as f64 / reference as f64)
}

/// Cosine similarity of two vectors; 0 when either is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The mean of `values`; `None` when there are none.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_matches_rouge_score() {
        // Made by rouge-score itself (tests/data/rouge_l.json says which version); the first
        // pair is the example of its README.
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/rouge_l.json")).expect("rouge_l.json");
        let pairs = data["pairs"].as_array().expect("pairs");
        assert!(pairs.len() >= 9);
        for pair in pairs {
            let text = |k: &str| pair[k].as_str().expect("text");
            let expected = pair["fmeasure"].as_f64().expect("fmeasure");
            let ours = rouge_l(text("reference"), text("candidate"));
            assert!((ours - expected).abs() < 1e-12, "{pair}: ours {ours}");
        }
        assert_eq!(rouge_l("same words here", "Same, words: here!"), 1.0);
    }

    #[test]
    fn lengths_and_cosines() {
        assert_eq!(length_ratio("a b c d", "a b"), Some(0.5));
        assert_eq!(length_ratio("  ", "a b"), None);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(mean([1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(std::iter::empty()), None);
    }
}
