//! The histogram observers' kernels: `torch.histc` (integer counts, split across threads for
//! long inputs), `HistogramObserver`'s upsampling merge of a histogram into a grown range, and
//! the entropy observer's histogram of |x|.

use super::aten::{torch_linspace_f32, torch_sum_f32};
use super::minmax::aminmax;
use super::state::HistogramStats;
use super::{PAR_CHUNK, PAR_MIN_LEN, UPSAMPLE_RATE};
use crate::quant::{torch_maximum, torch_minimum};

/// `torch.histc(x, bins, min=lo, max=hi)` on CPU (`histogramdd` with linear-interpolation bins):
/// an equal `lo`/`hi` falls back to the data's range, and to `lo − 1, hi + 1` (in float64) if that
/// is a single value too; elements outside the float32 edges are skipped; the bin is
/// `int((x − left)·bins / (right − left))` in float32, the last bin closed.
fn torch_histc(x: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<f32> {
    let (mut left, mut right) = (f64::from(lo), f64::from(hi));
    if left == right && !x.is_empty() {
        let (a, b) = aminmax(x);
        (left, right) = (f64::from(a), f64::from(b));
    }
    if left == right {
        left -= 1.0;
        right += 1.0;
    }
    // The edges are float32 `linspace` endpoints, which are exact.
    counts_to_f32(&histc_counts(x, false, bins, left as f32, right as f32))
}

/// Float32 histogram counts from exact integer ones. PyTorch's kernel (and this module's
/// definition) adds 1.0 per element to a float32 bin, which is exact up to 2^24 and then stays
/// at 2^24 (2^24 + 1 rounds back to even), so a count `n` is `min(n, 2^24)`.
fn counts_to_f32(counts: &[u64]) -> Vec<f32> {
    counts.iter().map(|&n| n.min(1 << 24) as f32).collect()
}

/// The integer bin counts of `torch.histc` with float32 edges `left`, `right` (of `|x|` when
/// `abs`): counting is order-independent, so long inputs are split across threads.
fn histc_counts(x: &[f32], abs: bool, bins: usize, left: f32, right: f32) -> Vec<u64> {
    if x.len() >= PAR_MIN_LEN {
        use rayon::prelude::*;
        // Each task allocates its own sub-histograms: give it enough elements to fill them.
        let chunk = PAR_CHUNK.max(8 * bins);
        x.par_chunks(chunk).map(|c| histc_counts_serial(c, abs, bins, left, right)).reduce(
            || vec![0; bins],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
    } else {
        histc_counts_serial(x, abs, bins, left, right)
    }
}

/// Interleaved sub-histograms of [`histc_counts_serial`]: consecutive elements landing in the
/// same bin (the zeros after a ReLU) do not wait on each other's increments.
const SUB_HISTOGRAMS: usize = 4;
/// Elements whose bins are computed together (a vectorised loop) before they are counted.
const HISTC_BLOCK: usize = 256;
/// 2^23: adding and subtracting it rounds a float32 in [0, 2^23) to an integer.
const ROUNDING_MAGIC: f32 = 8_388_608.0;

fn histc_counts_serial(x: &[f32], abs: bool, bins: usize, left: f32, right: f32) -> Vec<u64> {
    if abs {
        histc_counts_impl::<true>(x, bins, left, right)
    } else {
        histc_counts_impl::<false>(x, bins, left, right)
    }
}

/// The bins of `x` (of `|x|` when `ABS`) over float32 edges `left < right`, written to `out`:
/// `int((v − left)·bins / (right − left))` (truncated, NaN to 0) limited to the last bin, and
/// `bins` — a slot that is thrown away — for values outside `[left, right]`.
///
/// The quotient is clamped to `[0, bins − 1]` in float32 first (NaN to 0, as `as usize` does) and
/// then truncated with float32 arithmetic that the compiler vectorises (a saturating `as` cast is
/// not): `r = (q + 2^23) − 2^23` rounds `q` to an integer, `r − 1` when that rounded up, and the
/// low mantissa bits of `floor(q) + 2^23` are `floor(q)`; all exact for `0 ≤ q < 2^23`.
fn bin_indices<const ABS: bool>(x: &[f32], out: &mut [u32], bins: usize, left: f32, right: f32) {
    let n = bins as f32;
    let width = right - left;
    let last = (bins - 1) as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let v = if ABS { v.abs() } else { v };
        let q = (v - left) * n / width;
        let inside = (v >= left) & (v <= right);
        let q = if q > last { last } else { q };
        let q = if q >= 0.0 { q } else { 0.0 };
        let q = if inside { q } else { n };
        let r = (q + ROUNDING_MAGIC) - ROUNDING_MAGIC;
        let floor = if r > q { r - 1.0 } else { r };
        *o = (floor + ROUNDING_MAGIC).to_bits() - ROUNDING_MAGIC.to_bits();
    }
}

fn histc_counts_impl<const ABS: bool>(x: &[f32], bins: usize, left: f32, right: f32) -> Vec<u64> {
    let mut out = vec![0u64; bins];
    if right == left {
        // PyTorch divides 0 by 0 here (undefined behaviour); see the module doc.
        out[bins / 2] = x.iter().filter(|&&v| (if ABS { v.abs() } else { v }) == left).count() as u64;
        return out;
    }
    let stride = bins + 1;
    let mut sub = vec![0u32; SUB_HISTOGRAMS * stride];
    let mut idx = [0u32; HISTC_BLOCK];
    // Groups of blocks keep the u32 sub-counts from overflowing.
    for group in x.chunks(1 << 30) {
        for block in group.chunks(HISTC_BLOCK) {
            let idx = &mut idx[..block.len()];
            bin_indices::<ABS>(block, idx, bins, left, right);
            let (s0, rest) = sub.split_at_mut(stride);
            let (s1, rest) = rest.split_at_mut(stride);
            let (s2, s3) = rest.split_at_mut(stride);
            let mut quads = idx.chunks_exact(SUB_HISTOGRAMS);
            for q in &mut quads {
                s0[q[0] as usize] += 1;
                s1[q[1] as usize] += 1;
                s2[q[2] as usize] += 1;
                s3[q[3] as usize] += 1;
            }
            for &i in quads.remainder() {
                s0[i as usize] += 1;
            }
        }
        for part in sub.chunks_exact_mut(stride) {
            out.iter_mut().zip(&*part).for_each(|(o, &p)| *o += u64::from(p));
            part.fill(0);
        }
    }
    out
}

/// `HistogramObserver._upscale_histogram`: the old histogram (over `[orig_min, orig_max]`) in the
/// bins of `[new_min, new_max]`.
fn upscale_histogram(hist: &[f32], orig_min: f32, orig_max: f32, new_min: f32, new_max: f32) -> Vec<f32> {
    let bins = hist.len();
    let fine = bins * UPSAMPLE_RATE;
    let bin_size = (orig_max - orig_min) / fine as f32;
    let half = 0.5 * bin_size;
    let mids = torch_linspace_f32(orig_min, orig_max, fine + 1);
    let edges = torch_linspace_f32(new_min, new_max, bins + 1);
    // bucketize(right=True): the number of edges ≤ the midpoint. The midpoints normally rise, so
    // over sorted edges a cursor that only moves forward finds it; anything else (NaN, a
    // midpoint below its predecessor, unsorted edges) takes the binary search.
    let sorted = edges.windows(2).all(|w| w[0] <= w[1]);
    let mut cursor: Option<(f32, usize)> = None;
    let mut out = vec![0.0f32; bins];
    for (i, &m) in mids[..fine].iter().enumerate() {
        let mid = m + half;
        let above = match cursor {
            Some((prev, mut j)) if sorted && mid >= prev => {
                while j < edges.len() && edges[j] <= mid {
                    j += 1;
                }
                j
            }
            _ => edges.partition_point(|&e| e <= mid),
        };
        cursor = (sorted && !mid.is_nan()).then_some((mid, above));
        // bucketize(right=True) − 1, clamped to the bins.
        let bucket = above.saturating_sub(1).min(bins - 1);
        out[bucket] += hist[i / UPSAMPLE_RATE] / UPSAMPLE_RATE as f32;
    }
    out
}

/// `HistogramObserver._combine_histograms` (the equal-range case is handled by the caller).
fn combine_histograms(
    orig: &[f32],
    orig_min: f32,
    orig_max: f32,
    update: &[f32],
    new_min: f32,
    new_max: f32,
) -> Vec<f32> {
    let bins = orig.len();
    if orig_min == orig_max {
        let weight = torch_sum_f32(orig);
        let single = torch_histc(&[orig_min], bins, new_min, new_max);
        return single.iter().zip(update).map(|(&s, &u)| s * weight + u).collect();
    }
    let upscaled = upscale_histogram(orig, orig_min, orig_max, new_min, new_max);
    update.iter().zip(&upscaled).map(|(&u, &t)| u + t).collect()
}

/// `HistogramObserver.forward` on finite, non-empty data whose [`aminmax`] is `(xmin, xmax)`.
pub(super) fn histogram_observe(h: &mut HistogramStats, x: &[f32], xmin: f32, xmax: f32) {
    let bins = h.counts.len();
    if !h.is_initialized() {
        h.min_val = xmin;
        h.max_val = xmax;
        h.counts = torch_histc(x, bins, xmin, xmax);
        return;
    }
    let new_min = torch_minimum(h.min_val, xmin);
    let new_max = torch_maximum(h.max_val, xmax);
    let update = torch_histc(x, bins, new_min, new_max);
    if new_min == h.min_val && new_max == h.max_val {
        h.counts.iter_mut().zip(&update).for_each(|(c, &u)| *c += u);
    } else {
        h.counts = combine_histograms(&h.counts, h.min_val, h.max_val, &update, new_min, new_max);
        h.min_val = new_min;
        h.max_val = new_max;
    }
}

/// The entropy observer's histogram of |x| over `[0, hi]` (all in bin 0 while `hi` is 0).
fn abs_histc(x: &[f32], bins: usize, hi: f32) -> Vec<f32> {
    if hi == 0.0 {
        let mut out = vec![0.0f32; bins];
        out[0] = x.len() as f32;
        return out;
    }
    // `torch_histc(|x|, bins, 0.0, hi)`: hi > 0, so the edges are 0 and hi.
    counts_to_f32(&histc_counts(x, true, bins, 0.0, hi))
}

/// The entropy observer's `forward` on finite, non-empty data whose [`aminmax`] is
/// `(xmin, xmax)`.
pub(super) fn abs_histogram_observe(h: &mut HistogramStats, x: &[f32], xmin: f32, xmax: f32) {
    let bins = h.counts.len();
    let first = !h.is_initialized();
    let old_hi = h.abs_max();
    h.min_val = torch_minimum(xmin, h.min_val);
    h.max_val = torch_maximum(xmax, h.max_val);
    let hi = h.abs_max();
    let update = abs_histc(x, bins, hi);
    if first {
        h.counts = update;
    } else if hi == old_hi {
        h.counts.iter_mut().zip(&update).for_each(|(c, &u)| *c += u);
    } else {
        h.counts = combine_histograms(&h.counts, 0.0, old_hi, &update, 0.0, hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::observer::aten::div_floor;

    #[test]
    fn histc_matches_pytorch_rules() {
        // The last bin is closed; a constant input spans [c - 1, c + 1].
        assert_eq!(torch_histc(&[0.0, 1.0, 0.5], 4, 0.0, 1.0), vec![1.0, 0.0, 1.0, 1.0]);
        let h = torch_histc(&[2.0, 2.0], 4, 2.0, 2.0);
        assert_eq!(h, vec![0.0, 0.0, 2.0, 0.0]);
        // Python's floor division: -0.5 // 0.25 = -2, 0.7 // 0.1 = 6 (0.7 - fmod is 0.6000001).
        assert_eq!(div_floor(-0.5, 0.25), -2.0);
        assert_eq!(div_floor(0.7, 0.1), 6.0);
        assert_eq!((0.7f32 / 0.1).floor(), 7.0);
        assert_eq!(div_floor(0.0, -1.0).to_bits(), (-0.0f32).to_bits());
    }
}
