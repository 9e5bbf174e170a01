//! The searches that turn a histogram into a range: `HistogramObserver`'s L2 search
//! (`_non_linear_param_search`), the `percentile` clip and the `entropy` (KL-divergence) cut.

use std::sync::OnceLock;

use super::aten::{div_floor, torch_cumsum_f32, torch_sum_f32, SumOrder};
use super::state::HistogramStats;

/// `HistogramObserver._compute_quantization_error(next_start_bin, next_end_bin)`. `nonempty`
/// is the sum order of the histogram's nonempty bins: an empty bin's density is 0 and each of
/// its terms ±0, so its norm is +0 and only the others need computing.
fn quantization_error(h: &HistogramStats, nonempty: &SumOrder, start: usize, end: usize, dst_nbins: f64) -> f64 {
    let bins = h.counts.len();
    // Python floats.
    let bin_width = (f64::from(h.max_val) - f64::from(h.min_val)) / bins as f64;
    let dst_bin_width = bin_width * (end - start + 1) as f64 / dst_nbins;
    if dst_bin_width == 0.0 {
        return 0.0;
    }
    // Python scalars entering float32 tensor ops become float32.
    let bw = bin_width as f32;
    let dbw = dst_bin_width as f32;
    let half = (dst_bin_width / 2.0) as f32;
    let neg_half = (-dst_bin_width / 2.0) as f32;
    let last_dst = (dst_nbins - 1.0) as f32;
    let clamp = |v: f32| v.max(0.0).min(last_dst);
    // `_get_norm(tensor(-dbw/2), tensor(dbw/2), density)` before the density factor.
    let mid_norm = (half * half * half - neg_half * neg_half * neg_half) / 3.0;
    let neg_half_cubed = neg_half * neg_half * neg_half;
    let norm = |i: usize| {
        let count = h.counts[i];
        let src_begin = (i as i64 - start as i64) as f32 * bw;
        let src_end = src_begin + bw;
        let dst_begin = clamp(div_floor(src_begin, dbw));
        let dst_begin_center = (dst_begin + 0.5) * dbw;
        let dst_end = clamp(div_floor(src_end, dbw));
        let density = count / bw;
        let delta_begin = src_begin - dst_begin_center;
        let mut norm = 0.0f32;
        norm += density * ((half * half * half - delta_begin * delta_begin * delta_begin) / 3.0);
        norm += (dst_end - dst_begin - 1.0) * (density * mid_norm);
        let dst_end_center = dst_end * dbw + half;
        let delta_end = src_end - dst_end_center;
        norm += density * ((delta_end * delta_end * delta_end - neg_half_cubed) / 3.0);
        norm
    };
    f64::from(nonempty.sum(norm))
}

/// `HistogramObserver._non_linear_param_search`'s step: its quantile bounds move in steps of 1e-5.
const SEARCH_STEP: f64 = 1e-5;

/// The values the search's `alpha` takes (`alpha += stepsize` from 0, each sum rounded) and those
/// of `beta` (`beta -= stepsize` from 1), by step count. Every search walks the same two
/// sequences, only interleaved differently, so they are computed once. The search runs while
/// `alpha < beta`, so `a` steps of one and `b` of the other have `a + b ≤ 1/stepsize`: the
/// tables end one step beyond, where `beta` is below every `alpha`.
fn search_steps() -> &'static (Vec<f64>, Vec<f64>) {
    static STEPS: OnceLock<(Vec<f64>, Vec<f64>)> = OnceLock::new();
    STEPS.get_or_init(|| {
        let n = (1.0 / SEARCH_STEP) as usize + 3;
        let (mut alpha, mut beta) = (0.0f64, 1.0f64);
        let (mut alphas, mut betas) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            alphas.push(alpha);
            betas.push(beta);
            alpha += SEARCH_STEP;
            beta -= SEARCH_STEP;
        }
        (alphas, betas)
    })
}

/// `HistogramObserver._non_linear_param_search`: the (min, max) that minimise the L2
/// quantization error, found by shrinking the histogram's quantile bounds in 1e-5 steps.
///
/// PyTorch takes every step, up to 10^5 of them; most move neither bound and only lower `beta`.
/// Such a run ends at the first step whose `beta` moves the upper bound or ends the search,
/// which both only get likelier as `beta` falls: a binary search over the step tables finds it
/// and the result is the same, step for step.
pub(super) fn non_linear_param_search(h: &HistogramStats, dst_nbins: f64) -> (f32, f32) {
    let bins = h.counts.len();
    let bin_width = (h.max_val - h.min_val) / bins as f32;
    let total = f64::from(torch_sum_f32(&h.counts));
    let csum = torch_cumsum_f32(&h.counts);
    let nonempty = SumOrder::new(bins, (0..bins).filter(|&i| h.counts[i] != 0.0));
    let (alphas, betas) = search_steps();
    // Past the tables (unreachable, see `search_steps`) the comparisons with NaN end the search.
    let at = |steps: &[f64], k: usize| steps.get(k).copied().unwrap_or(f64::NAN);
    // `cSum[r] > next_beta * total` with `beta` at step `b`: the Python float rounded to float32.
    let upper_at = |b: usize| (at(betas, b + 1) * total) as f32;
    // `alpha` and `beta` as step counts.
    let (mut a, mut b) = (0usize, 0usize);
    let (mut start, mut end) = (0usize, bins - 1);
    let mut norm_min = f64::INFINITY;
    while at(alphas, a) < at(betas, b) {
        // `cSum[l] < next_alpha * total`: likewise.
        let (lower, upper) = ((at(alphas, a + 1) * total) as f32, upper_at(b));
        let mut l = start;
        while l < end && csum[l] < lower {
            l += 1;
        }
        let mut r = end;
        while r > start && csum[r] > upper {
            r -= 1;
        }
        if l == start && r == end {
            // Nothing moves: skip the steps of `beta` that still move nothing.
            let alpha = at(alphas, a);
            // `alpha < beta` fails (or beta is past the tables, NaN) or the upper bound moves.
            let moves_or_ends = |b: usize| {
                alpha.partial_cmp(&at(betas, b)) != Some(std::cmp::Ordering::Less)
                    || (end > start && csum[end] > upper_at(b))
            };
            let (mut lo, mut hi) = (b + 1, betas.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if moves_or_ends(mid) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            b = lo;
            continue;
        }
        let (mut next_start, mut next_end) = (start, end);
        if l - start > end - r {
            next_start = l;
            a += 1;
        } else {
            next_end = r;
            b += 1;
        }
        let norm = quantization_error(h, &nonempty, next_start, next_end, dst_nbins);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = next_start;
        end = next_end;
    }
    (h.min_val + bin_width * start as f32, h.min_val + bin_width * (end + 1) as f32)
}

/// The `percentile` observer's clipping range (see the module doc).
pub(super) fn percentile_range(h: &HistogramStats, percentile: f64) -> (f32, f32) {
    let bins = h.counts.len();
    let total: f64 = h.counts.iter().fold(0.0, |acc, &c| acc + f64::from(c));
    let tail = total * (100.0 - percentile) / 200.0;
    let mut cum = 0.0f64;
    let lo = h
        .counts
        .iter()
        .position(|&c| {
            cum += f64::from(c);
            cum > tail
        })
        .unwrap_or(0);
    cum = 0.0;
    let hi = h
        .counts
        .iter()
        .rposition(|&c| {
            cum += f64::from(c);
            cum > tail
        })
        .unwrap_or(bins - 1)
        .max(lo);
    let bin_width = (h.max_val - h.min_val) / bins as f32;
    let new_min = h.min_val + bin_width * lo as f32;
    let new_max = if hi == bins - 1 { h.max_val } else { h.min_val + bin_width * (hi + 1) as f32 };
    (new_min, new_max)
}

/// The entropy observer's cut: how many |x| bins to keep (see the module doc).
///
/// The definition tries every cut with an O(bins) divergence: O(bins²) in all (18 s for 65 536
/// bins). Here each cut's divergence is first estimated from prefix sums and group sums shared
/// by the cuts of one group width, with a bound on how far both the estimate and the defined
/// float64 sum can be from the exact divergence: only the cuts whose lower bound reaches the
/// smallest upper bound can hold the first minimum of the defined sums, and only those are
/// evaluated as defined ([`entropy_divergence`]). The result is the definition's, bit for bit:
/// every other cut's defined divergence is strictly larger than the minimum. (Group sums cost
/// O(bins²/levels) in all, a 128th of the definition's work for 8-bit ranges.)
pub(super) fn entropy_bins_kept(counts: &[f32], levels: usize) -> usize {
    let bins = counts.len();
    let h: Vec<f64> = counts.iter().map(|&c| f64::from(c)).collect();
    if h.iter().fold(0.0, |acc, &v| acc + v) == 0.0 {
        return bins;
    }
    let sums = EntropySums::new(&h);
    let mut groups: Vec<f64> = Vec::with_capacity(levels);
    let mut bounds = Vec::with_capacity(bins + 1 - levels);
    for i in levels..=bins {
        let merged = i / levels;
        if groups.is_empty() || i % levels == 0 {
            // The sums of the groups before the last one, the same for every cut of this width.
            groups.clear();
            groups.extend((0..levels - 1).map(|g| h[g * merged..(g + 1) * merged].iter().fold(0.0, |a, &v| a + v)));
        }
        bounds.push(sums.divergence_bounds(&h, i, levels, &groups));
    }
    let cutoff = bounds.iter().map(|&(_, hi)| hi).fold(f64::INFINITY, f64::min);
    let (mut best, mut best_kl) = (bins, f64::INFINITY);
    let (mut p, mut q) = (Vec::with_capacity(bins), Vec::with_capacity(bins));
    for (i, &(lo, _)) in (levels..).zip(&bounds) {
        if lo <= cutoff {
            let kl = entropy_divergence(&h, levels, i, &mut p, &mut q);
            if kl < best_kl {
                best_kl = kl;
                best = i;
            }
        }
    }
    best
}

/// The divergence of cut `i` as defined (see the module doc), in its float64 operation order;
/// `p` and `q` are scratch buffers.
fn entropy_divergence(h: &[f64], levels: usize, i: usize, p: &mut Vec<f64>, q: &mut Vec<f64>) -> f64 {
    p.clear();
    p.extend_from_slice(&h[..i]);
    let outliers = h[i..].iter().fold(0.0, |acc, &v| acc + v);
    p[i - 1] += outliers;
    q.clear();
    q.resize(i, 0.0);
    let merged = i / levels;
    for g in 0..levels {
        let begin = g * merged;
        let stop = if g + 1 < levels { begin + merged } else { i };
        let sum = h[begin..stop].iter().fold(0.0, |acc, &v| acc + v);
        let nonzero = p[begin..stop].iter().filter(|&&v| v != 0.0).count();
        if nonzero > 0 {
            let share = sum / nonzero as f64;
            for k in begin..stop {
                if p[k] != 0.0 {
                    q[k] = share;
                }
            }
        }
    }
    let sp = p.iter().fold(0.0, |acc, &v| acc + v);
    let sq = q.iter().fold(0.0, |acc, &v| acc + v);
    let mut kl = 0.0f64;
    for (&pk, &qk) in p.iter().zip(q.iter()) {
        if pk != 0.0 {
            if qk == 0.0 {
                return f64::INFINITY;
            }
            let (pk, qk) = (pk / sp, qk / sq);
            kl += pk * (pk / qk).ln();
        }
    }
    kl
}

/// Sums over a histogram `h` for [`EntropySums::divergence_bounds`]: entry `k` of a prefix
/// covers bins `0..k`, of a suffix bins `k..`.
struct EntropySums {
    /// Σ h·ln h (0 for empty bins), prefix.
    mass_log: Vec<f64>,
    /// Σ |h·ln h|, prefix.
    mass_log_abs: Vec<f64>,
    /// Non-zero bins, prefix.
    nonzero: Vec<usize>,
    /// Σ h, suffix (summed from the end: no cancellation).
    tail: Vec<f64>,
}

impl EntropySums {
    fn new(h: &[f64]) -> EntropySums {
        let n = h.len();
        let mut sums = EntropySums {
            mass_log: Vec::with_capacity(n + 1),
            mass_log_abs: Vec::with_capacity(n + 1),
            nonzero: Vec::with_capacity(n + 1),
            tail: vec![0.0; n + 1],
        };
        let (mut ml, mut mla, mut nz) = (0.0, 0.0, 0);
        for &v in h {
            sums.mass_log.push(ml);
            sums.mass_log_abs.push(mla);
            sums.nonzero.push(nz);
            let t = if v != 0.0 { v * v.ln() } else { 0.0 };
            (ml, mla, nz) = (ml + t, mla + t.abs(), nz + usize::from(v != 0.0));
        }
        sums.mass_log.push(ml);
        sums.mass_log_abs.push(mla);
        sums.nonzero.push(nz);
        for k in (0..n).rev() {
            sums.tail[k] = sums.tail[k + 1] + h[k];
        }
        sums
    }

    /// Bounds `(lo, hi)` on the defined divergence of cut `i` ([`entropy_divergence`]), given
    /// the sums of its groups but the last (`groups`): `(inf, inf)` exactly when it is infinite,
    /// `(-inf, inf)` when no bound can be given. With `P` the reference and `Q` the merged
    /// distribution (see the module doc), `KL = (Σ p ln p − Σ_g S_g ln share_g)/sp − ln sp +
    /// ln sq`, where `S_g` is the mass of `P` in group `g`, `share_g` the value `Q` spreads over
    /// the group's non-zero bins, `sp` the mass of `P` (all of `h`) and `sq` that of `Q`.
    fn divergence_bounds(&self, h: &[f64], i: usize, levels: usize, groups: &[f64]) -> (f64, f64) {
        let n = h.len();
        let merged = i / levels;
        let outliers = self.tail[i];
        // The last bin of P carries the outliers.
        let last = h[i - 1] + outliers;
        let last_begin = (levels - 1) * merged;
        let last_sum = h[last_begin..i].iter().fold(0.0, |a, &v| a + v);
        let (mut cross, mut cross_abs, mut sq) = (0.0f64, 0.0f64, 0.0f64);
        for g in 0..levels {
            let (begin, stop, sum) = match groups.get(g) {
                Some(&sum) => (g * merged, (g + 1) * merged, sum),
                None => (last_begin, i, last_sum),
            };
            let h_nonzero = self.nonzero[stop] - self.nonzero[begin];
            let p_nonzero = if stop == i {
                self.nonzero[i - 1] - self.nonzero[begin] + usize::from(last != 0.0)
            } else {
                h_nonzero
            };
            if p_nonzero == 0 {
                continue;
            }
            if h_nonzero == 0 {
                // Q is 0 where P is not (the outliers' bin): the divergence is infinite.
                return (f64::INFINITY, f64::INFINITY);
            }
            let share = sum / p_nonzero as f64;
            let mass = if stop == i { sum + outliers } else { sum };
            cross += mass * share.ln();
            cross_abs += mass * share.ln().abs();
            sq += sum;
        }
        let sp = self.tail[0];
        let last_log = if last != 0.0 { last * last.ln() } else { 0.0 };
        let plogp = self.mass_log[i - 1] + last_log;
        let plogp_abs = self.mass_log_abs[i - 1] + last_log.abs();
        let kl = (plogp - cross) / sp - sp.ln() + sq.ln();
        // Every sum here and in the definition has at most `n + levels` terms, and every other
        // quantity a few roundings: each is within (n + levels + 16)·2⁻⁵³ of the magnitudes it
        // combines (relative for sums of non-negative terms). The bound takes 64 times that.
        let magnitude = (plogp_abs + cross_abs + sp + sq) / sp + sp.ln().abs() + sq.ln().abs() + 1.0;
        let err = 64.0 * (n + levels + 16) as f64 * (f64::EPSILON / 2.0) * magnitude;
        if !(kl.is_finite() && err.is_finite()) {
            return (f64::NEG_INFINITY, f64::INFINITY);
        }
        (kl - err, kl + err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pruned entropy search returns the cut of the full one (every candidate evaluated
    /// as defined) on histograms built to have ties, zeros, fractional counts and tails.
    #[test]
    fn entropy_search_matches_the_exhaustive_one() {
        let exhaustive = |counts: &[f32], levels: usize| {
            let h: Vec<f64> = counts.iter().map(|&c| f64::from(c)).collect();
            if h.iter().sum::<f64>() == 0.0 {
                return counts.len();
            }
            let (mut p, mut q) = (Vec::new(), Vec::new());
            let (mut best, mut best_kl) = (counts.len(), f64::INFINITY);
            for i in levels..=counts.len() {
                let kl = entropy_divergence(&h, levels, i, &mut p, &mut q);
                if kl < best_kl {
                    (best, best_kl) = (i, kl);
                }
            }
            best
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let bins = 1 + (next() % 300) as usize;
            let levels = [1, 2, 3, 7, 128][case % 5].min(bins);
            let counts: Vec<f32> = (0..bins)
                .map(|k| match case % 4 {
                    // Gaussian-like with a sparse tail.
                    0 => (1e4 * (-((k as f32) / (bins as f32 / 4.0)).powi(2)).exp()).floor(),
                    // Flat: many exact ties.
                    1 => 5.0,
                    // Sparse with zeros and outliers.
                    2 => [0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 1e6][(next() % 8) as usize],
                    // Fractional counts, as upsampling makes.
                    _ => (next() % 64) as f32 / 16.0,
                })
                .collect();
            assert_eq!(entropy_bins_kept(&counts, levels), exhaustive(&counts, levels), "case {case}: {counts:?}");
        }
    }
}
