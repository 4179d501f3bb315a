//! `histogram_quantile` over classic histograms: gauges (or counters) whose `le` label is a
//! bucket's upper bound and whose value is the cumulative count of observations at or below it.
//!
//! Prometheus 2's rules (`bucketQuantile`): buckets are sorted by bound and buckets of equal bound
//! merged; without a `+Inf` bucket, or with fewer than two buckets, or no observations, the answer is
//! NaN; counts that decrease with the bound (a scrape or an envelope caught mid-update) are raised to
//! the running maximum; the quantile is interpolated linearly inside its bucket, the first bucket
//! starting at 0 unless its bound is negative, and a rank in the `+Inf` bucket answers the highest
//! finite bound.

/// One bucket: upper bound and cumulative count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    pub upper_bound: f64,
    pub count: f64,
}

/// The `q`-quantile of one histogram's buckets, in any order.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    if buckets.last().is_none_or(|b| b.upper_bound != f64::INFINITY) {
        return f64::NAN;
    }
    coalesce(buckets);
    ensure_monotonic(buckets);
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets.last().map_or(0.0, |b| b.count);
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let last = buckets.len() - 1;
    let b = go_sort_search(last, |i| buckets.get(i).is_some_and(|bucket| bucket.count >= rank));
    if b == last {
        return buckets.get(last - 1).map_or(f64::NAN, |bucket| bucket.upper_bound);
    }
    let Some(bucket) = buckets.get(b) else {
        return f64::NAN;
    };
    if b == 0 && bucket.upper_bound <= 0.0 {
        return bucket.upper_bound;
    }
    let mut bucket_start = 0.0;
    let bucket_end = bucket.upper_bound;
    let mut count = bucket.count;
    if let Some(previous) = b.checked_sub(1).and_then(|i| buckets.get(i)) {
        bucket_start = previous.upper_bound;
        count -= previous.count;
        rank -= previous.count;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Merges adjacent buckets of equal bound (the input is sorted), adding their counts.
fn coalesce(buckets: &mut Vec<Bucket>) {
    let mut merged: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for bucket in buckets.drain(..) {
        match merged.last_mut() {
            Some(last) if last.upper_bound == bucket.upper_bound => last.count += bucket.count,
            _ => merged.push(bucket),
        }
    }
    *buckets = merged;
}

/// Raises every count to at least the counts of the buckets below it.
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let mut max = f64::NEG_INFINITY;
    for bucket in buckets {
        if bucket.count > max {
            max = bucket.count;
        } else if bucket.count < max {
            bucket.count = max;
        }
    }
}

/// Go's `sort.Search(n, f)`: the smallest index in `[0, n)` where `f` holds, assuming it holds from
/// some index on, else `n`. The probe order is Go's, so that counts which are not monotonic (NaN)
/// land where Prometheus lands them.
fn go_sort_search(n: usize, f: impl Fn(usize) -> bool) -> usize {
    let (mut i, mut j) = (0, n);
    while i < j {
        let h = i + (j - i) / 2;
        if !f(h) {
            i = h + 1;
        } else {
            j = h;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs.iter().map(|&(upper_bound, count)| Bucket { upper_bound, count }).collect()
    }

    #[test]
    fn interpolates_inside_the_bucket_of_the_rank() {
        let mut b = buckets(&[(f64::INFINITY, 10.0), (1.0, 8.0), (0.5, 4.0)]);
        // Rank 5 of 10 lies in (0.5, 1]: 1 of its 4 observations in.
        assert_eq!(bucket_quantile(0.5, &mut b), 0.625);
        // The first bucket starts at 0.
        assert_eq!(bucket_quantile(0.2, &mut b), 0.25);
        // A rank in the +Inf bucket answers the highest finite bound.
        assert_eq!(bucket_quantile(0.95, &mut b), 1.0);
    }

    #[test]
    fn anomalies_follow_prometheus() {
        // No +Inf bucket, too few buckets, no observations: NaN.
        assert!(bucket_quantile(0.5, &mut buckets(&[(1.0, 1.0), (2.0, 2.0)])).is_nan());
        assert!(bucket_quantile(0.5, &mut buckets(&[(f64::INFINITY, 2.0)])).is_nan());
        assert!(bucket_quantile(0.5, &mut buckets(&[(1.0, 0.0), (f64::INFINITY, 0.0)])).is_nan());
        assert!(bucket_quantile(f64::NAN, &mut buckets(&[(1.0, 1.0), (f64::INFINITY, 1.0)])).is_nan());
        // Out-of-range quantiles.
        assert_eq!(bucket_quantile(-0.1, &mut buckets(&[(1.0, 1.0), (f64::INFINITY, 1.0)])), f64::NEG_INFINITY);
        assert_eq!(bucket_quantile(1.1, &mut buckets(&[(1.0, 1.0), (f64::INFINITY, 1.0)])), f64::INFINITY);
        // A decreasing count is raised to the one below: (1, 2) becomes (1, 4).
        let mut dip = buckets(&[(0.5, 4.0), (1.0, 2.0), (2.0, 8.0), (f64::INFINITY, 8.0)]);
        assert_eq!(bucket_quantile(0.5, &mut dip), 0.5);
        // Buckets of equal bound are merged.
        let mut twice = buckets(&[(1.0, 1.0), (1.0, 1.0), (2.0, 4.0), (f64::INFINITY, 4.0)]);
        assert_eq!(bucket_quantile(0.5, &mut twice), 1.0);
        // A first bucket with a negative bound answers its bound.
        assert_eq!(bucket_quantile(0.1, &mut buckets(&[(-1.0, 5.0), (f64::INFINITY, 10.0)])), -1.0);
        // NaN counts do not panic.
        let mut nan = buckets(&[(1.0, f64::NAN), (2.0, 3.0), (f64::INFINITY, f64::NAN)]);
        let _ = bucket_quantile(0.5, &mut nan);
    }
}
