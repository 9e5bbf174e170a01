//! The min/max observers' kernels: `torch.aminmax` (one pass that also counts non-finite
//! elements, split across threads for long inputs), its per-channel form, and the
//! moving-average step.

use super::{PAR_CHUNK, PAR_MIN_LEN};

/// `torch.aminmax` of NaN-free, non-empty data. Between `+0.0` and `-0.0` the later element wins,
/// as in PyTorch's scalar loop (its vectorised loop picks by lane; see the module doc).
///
/// This is the reference definition; [`scan`] plus [`Scan::fix_zeros`] compute the same thing
/// faster.
pub(super) fn aminmax<'a>(values: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
    values.into_iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (if v <= lo { v } else { lo }, if v >= hi { v } else { hi })
    })
}

/// One moving-average step in float32: `running + c·(current − running)`.
pub(super) fn ema(running: f32, current: f32, c: f32) -> f32 {
    running + c * (current - running)
}

/// Lanes of the min/max scan (wide enough for the compiler to vectorise it).
const SCAN_LANES: usize = 8;
/// Per-channel runs shorter than this are folded in one pass over the data instead of being
/// scanned channel by channel.
const SMALL_INNER: usize = 64;

/// What one pass over a batch finds: its minimum and maximum (ignoring NaN; the sign of a zero
/// extreme is arbitrary until [`Scan::fix_zeros`]), how many elements are NaN, and how many are
/// not finite (NaN or ±inf).
#[derive(Copy, Clone, Debug)]
pub(super) struct Scan {
    min: f32,
    max: f32,
    pub(super) nans: usize,
    pub(super) nonfinite: usize,
}

impl Scan {
    const EMPTY: Scan = Scan { min: f32::INFINITY, max: f32::NEG_INFINITY, nans: 0, nonfinite: 0 };

    fn merge(self, other: Scan) -> Scan {
        Scan {
            min: if other.min < self.min { other.min } else { self.min },
            max: if other.max > self.max { other.max } else { self.max },
            nans: self.nans + other.nans,
            nonfinite: self.nonfinite + other.nonfinite,
        }
    }

    /// [`aminmax`] of the scanned NaN-free data `x`: a zero minimum or maximum takes the sign of
    /// the last zero in `x` (where [`aminmax`]'s fold ends up; no element is below a zero minimum,
    /// so every zero after the first replaces it).
    pub(super) fn fix_zeros(self, x: &[f32]) -> (f32, f32) {
        self.fix_zeros_with(|| x.iter().rev().copied().find(|&v| v == 0.0))
    }

    fn fix_zeros_with(self, last_zero: impl FnOnce() -> Option<f32>) -> (f32, f32) {
        let (mut lo, mut hi) = (self.min, self.max);
        if lo == 0.0 || hi == 0.0 {
            let zero = last_zero().unwrap_or(0.0);
            if lo == 0.0 {
                lo = zero;
            }
            if hi == 0.0 {
                hi = zero;
            }
        }
        (lo, hi)
    }
}

/// [`Scan`] of `x`, split across threads when long.
pub(super) fn scan(x: &[f32]) -> Scan {
    if x.len() >= PAR_MIN_LEN {
        use rayon::prelude::*;
        x.par_chunks(PAR_CHUNK).map(scan_serial).reduce(|| Scan::EMPTY, Scan::merge)
    } else {
        scan_serial(x)
    }
}

/// Zero for a finite `v` (`v − v` is +0.0), non-zero (NaN's bits) for NaN and ±inf: or-ing these
/// flags non-finite elements without counting them in the hot loop.
#[allow(clippy::eq_op)]
fn nonfinite_bits(v: f32) -> u32 {
    (v - v).to_bits()
}

fn scan_serial(x: &[f32]) -> Scan {
    let mut lo = [f32::INFINITY; SCAN_LANES];
    let mut hi = [f32::NEG_INFINITY; SCAN_LANES];
    let mut bad = [0u32; SCAN_LANES];
    let mut chunks = x.chunks_exact(SCAN_LANES);
    for c in &mut chunks {
        let c: &[f32; SCAN_LANES] = c.try_into().expect("exact chunk");
        for k in 0..SCAN_LANES {
            let v = c[k];
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
            bad[k] |= nonfinite_bits(v);
        }
    }
    for &v in chunks.remainder() {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        bad[0] |= nonfinite_bits(v);
    }
    let mut total = Scan::EMPTY;
    for k in 0..SCAN_LANES {
        total = total.merge(Scan { min: lo[k], max: hi[k], nans: 0, nonfinite: 0 });
    }
    if bad.iter().any(|&b| b != 0) {
        total.nans = x.iter().filter(|v| v.is_nan()).count();
        total.nonfinite = x.iter().filter(|v| !v.is_finite()).count();
    }
    total
}

/// Per-channel [`aminmax`] of row-major `data` of `shape` along `axis` (PyTorch swaps `axis` with
/// dimension 0 and flattens the rest, so each channel's elements are taken in row-major order of
/// the other dimensions), and the number of NaN values (the extremes are meaningless when there
/// are any). Channels are split across threads for large inputs.
pub(super) fn per_channel_aminmax(data: &[f32], shape: &[usize], axis: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    if inner < SMALL_INNER {
        // Short runs per channel: one pass in memory order updating every channel's fold (each
        // channel still sees its elements in order, so this is `aminmax` itself).
        let mut lo = vec![f32::INFINITY; channels];
        let mut hi = vec![f32::NEG_INFINITY; channels];
        let mut nans = 0;
        let fold = |l: &mut f32, h: &mut f32, v: f32| {
            *l = if v <= *l { v } else { *l };
            *h = if v >= *h { v } else { *h };
        };
        for row in data.chunks_exact(channels * inner) {
            if inner == 1 {
                lo.iter_mut().zip(&mut hi).zip(row).for_each(|((l, h), &v)| fold(l, h, v));
            } else {
                for ((l, h), run) in lo.iter_mut().zip(&mut hi).zip(row.chunks_exact(inner)) {
                    run.iter().for_each(|&v| fold(l, h, v));
                }
            }
            nans += row.iter().filter(|v| v.is_nan()).count();
        }
        return (lo, hi, nans);
    }
    // Channel `c` is the segments `data[(o·channels + c)·inner ..][..inner]` for `o` in order.
    let segment = |o: usize, c: usize| &data[(o * channels + c) * inner..][..inner];
    let channel = |c: usize| -> (f32, f32, usize) {
        let s = (0..outer).map(|o| scan_serial(segment(o, c))).fold(Scan::EMPTY, Scan::merge);
        let (lo, hi) =
            s.fix_zeros_with(|| (0..outer).rev().find_map(|o| segment(o, c).iter().rev().copied().find(|&v| v == 0.0)));
        (lo, hi, s.nans)
    };
    let per_channel: Vec<(f32, f32, usize)> = if data.len() >= PAR_MIN_LEN && channels > 1 {
        use rayon::prelude::*;
        let min_len = (PAR_CHUNK / inner.max(1) / outer.max(1)).max(1);
        (0..channels).into_par_iter().with_min_len(min_len).map(channel).collect()
    } else {
        (0..channels).map(channel).collect()
    };
    let nans = per_channel.iter().map(|c| c.2).sum();
    let (lo, hi) = per_channel.into_iter().map(|(lo, hi, _)| (lo, hi)).unzip();
    (lo, hi, nans)
}
