//! How closely two embedders agree: the cosine of each pair of vectors, and recall@k of a search
//! with one against a search with the other (exact, brute force).

/// Agreement of a candidate embedder with a reference one over the same passages and queries.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    /// Mean cosine between the two vectors of each passage.
    pub mean_cosine: f32,
    /// Lowest cosine between the two vectors of a passage.
    pub min_cosine: f32,
    /// Share of the reference's top `k` passages (its queries against its passages) that the
    /// candidate's top `k` (its queries against its passages) also holds, averaged over queries.
    pub recall: f32,
    /// The `k` of the recall.
    pub k: usize,
}

/// How `candidate` agrees with `reference` over the corpus (see
/// [`corpus_passages`](crate::documents::corpus_passages)) cut into passages of 180 words (about
/// 240 tokens), the articles' titles as queries; also the numbers of passages and queries. Each
/// function embeds a list of texts.
pub fn corpus_agreement(
    reference: impl Fn(&[&str]) -> Vec<Vec<f32>>,
    candidate: impl Fn(&[&str]) -> Vec<Vec<f32>>,
    k: usize,
) -> (Agreement, usize, usize) {
    let corpus = crate::documents::corpus_passages(180);
    let passages: Vec<&str> = corpus.passages.iter().map(String::as_str).collect();
    let titles: Vec<&str> = corpus.titles.iter().map(String::as_str).collect();
    let (want, want_queries) = (reference(&passages), reference(&titles));
    let (got, got_queries) = (candidate(&passages), candidate(&titles));
    (
        agreement((&want, &want_queries), (&got, &got_queries), k),
        passages.len(),
        titles.len(),
    )
}

/// The cosine of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}

/// The indexes of the `k` passages most similar to `query`, best first.
pub fn top_k(query: &[f32], passages: &[Vec<f32>], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| (cosine(query, p), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

/// How the candidate's vectors agree with the reference's: `(passages, queries)` of each, the
/// same texts in the same order.
pub fn agreement(
    reference: (&[Vec<f32>], &[Vec<f32>]),
    candidate: (&[Vec<f32>], &[Vec<f32>]),
    k: usize,
) -> Agreement {
    let cosines: Vec<f32> = reference
        .0
        .iter()
        .zip(candidate.0)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let found: Vec<f32> = reference
        .1
        .iter()
        .zip(candidate.1)
        .map(|(ref_query, query)| {
            let want = top_k(ref_query, reference.0, k);
            let got = top_k(query, candidate.0, k);
            want.iter().filter(|i| got.contains(i)).count() as f32 / k.max(1) as f32
        })
        .collect();
    Agreement {
        mean_cosine: cosines.iter().sum::<f32>() / cosines.len().max(1) as f32,
        min_cosine: cosines.iter().copied().fold(f32::INFINITY, f32::min),
        recall: found.iter().sum::<f32>() / found.len().max(1) as f32,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_vectors_agree_and_a_swapped_ranking_does_not() {
        let passages: Vec<Vec<f32>> = (0..20).map(|i| vec![1.0, i as f32 / 10.0]).collect();
        let queries = vec![vec![0.0, 1.0], vec![0.2, 1.0]];
        let same = agreement((&passages, &queries), (&passages, &queries), 5);
        assert_eq!(same.recall, 1.0);
        assert!(same.min_cosine > 0.9999, "{same:?}");
        // Queries pointing the other way rank the passages the other way round.
        let flipped: Vec<Vec<f32>> = queries.iter().map(|q| vec![q[0], -q[1]]).collect();
        let other = agreement((&passages, &queries), (&passages, &flipped), 5);
        assert_eq!(other.recall, 0.0, "{other:?}");
    }
}
