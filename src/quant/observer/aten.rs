//! PyTorch CPU kernels the observers' float32 arithmetic depends on, in their exact evaluation
//! order: the cascade `torch.sum`, `cumsum`, `linspace` (with its FMAs) and the floor division
//! of `c10::div_floor_floating` (see the module doc of [`super`], "Bit-exactness").

use super::F32_LANES;

/// `torch.sum` of a contiguous float32 vector: ATen's cascade sum (`SumKernel.cpp`,
/// `vectorized_inner_sum`) over `F32_LANES`-wide vectors, in float32.
pub(crate) fn torch_sum_f32(x: &[f32]) -> f32 {
    let body = x.len() / F32_LANES * F32_LANES;
    lanes_sum(x.len(), x[body..].iter().copied(), |lane| {
        let (elements, stride) = if x.len() < F32_LANES { (x, 1) } else { (&x[lane..body], F32_LANES) };
        elements.iter().step_by(stride).copied().enumerate()
    })
}

/// The cascade of [`torch_sum_f32`] over a vector of `len` elements: the tail beyond the last
/// whole `F32_LANES` vector is added first, then each lane's [`row_sum`] over its elements
/// (`lane(l)`: `(position in the lane, value)`), or, below one vector, one `row_sum` over all.
fn lanes_sum<I: Iterator<Item = (usize, f32)>>(
    len: usize,
    tail: impl Iterator<Item = f32>,
    lane: impl Fn(usize) -> I,
) -> f32 {
    if len < F32_LANES {
        return row_sum(len, lane(0));
    }
    let mut total = 0.0f32;
    for value in tail {
        total += value;
    }
    for l in 0..F32_LANES {
        total += row_sum(len / F32_LANES, lane(l));
    }
    total
}

/// Where the elements of a float32 vector go in [`torch_sum_f32`]'s reduction, for the ones
/// that can be nonzero: it sums in O(those) instead of O(len), with the dense sum's bits. An
/// accumulator starts at +0.0 and no float sum turns it into -0.0, so adding a +0.0 element
/// never changes it.
pub(super) struct SumOrder {
    len: usize,
    /// Element indices of the tail, in order.
    tail: Vec<usize>,
    /// Per lane, `(position in the lane, element index)` in order (one lane holding every
    /// element when `len < F32_LANES`).
    lanes: Vec<Vec<(usize, usize)>>,
}

impl SumOrder {
    /// The order of the elements `indices` (increasing, each `< len`).
    pub(super) fn new(len: usize, indices: impl Iterator<Item = usize>) -> SumOrder {
        let mut order = SumOrder { len, tail: Vec::new(), lanes: vec![Vec::new(); F32_LANES] };
        let body = len / F32_LANES * F32_LANES;
        for i in indices {
            if len < F32_LANES {
                order.lanes[0].push((i, i));
            } else if i < body {
                order.lanes[i % F32_LANES].push((i / F32_LANES, i));
            } else {
                order.tail.push(i);
            }
        }
        order
    }

    /// The sum of the vector whose element `i` is `value(i)` at the indices this order was built
    /// over and +0.0 elsewhere.
    pub(super) fn sum(&self, value: impl Fn(usize) -> f32) -> f32 {
        lanes_sum(self.len, self.tail.iter().map(|&i| value(i)), |l| {
            self.lanes[l].iter().map(|&(position, i)| (position, value(i)))
        })
    }
}

/// `row_sum` over `n` elements given as `(index, value)` in increasing index order (elements not
/// given are +0.0): four interleaved accumulators (`ilp_factor`), each a `multi_row_sum`
/// cascade, then the leftovers into the first, then the four summed in order.
fn row_sum(n: usize, elements: impl Iterator<Item = (usize, f32)>) -> f32 {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let rows = n / ILP;
    let ceil_log2 = |x: usize| if x <= 2 { 1 } else { usize::BITS - (x - 1).leading_zeros() } as usize;
    let level_power = (ceil_log2(rows) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut elements = elements.peekable();
    // Element `r·ILP + k` of the rows before `end` goes to accumulator `k`, rows in order.
    let mut add_rows_before = |acc: &mut [f32; ILP], end: usize| {
        while let Some((index, value)) = elements.next_if(|&(index, _)| index < end * ILP) {
            acc[index % ILP] += value;
        }
    };
    let mut acc = [[0.0f32; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        i += level_step;
        add_rows_before(&mut acc[0], i);
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *a += *b;
                *b = 0.0;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    add_rows_before(&mut acc[0], rows);
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, b) in first[0].iter_mut().zip(level) {
            *a += *b;
        }
    }
    let mut partial = acc[0];
    for (_, value) in elements {
        partial[0] += value;
    }
    partial[0] + partial[1] + partial[2] + partial[3]
}

/// `torch.cumsum` of float32 on CPU: accumulated in float64, stored as float32.
pub(super) fn torch_cumsum_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f64;
    x.iter()
        .map(|&v| {
            acc += f64::from(v);
            acc as f32
        })
        .collect()
}

/// `torch.linspace(start, end, steps)` in float32 (`steps ≥ 2`): the first half counts up from
/// `start`, the second half down from `end`, each element one fused multiply-add.
pub(super) fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    // `mul_add` is a call to libm's `fmaf` unless the code is compiled for FMA hardware; the
    // upsampling merge needs 2^15 of them per histogram. Both give the one correctly rounded
    // result.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        return unsafe { linspace_fma(start, end, steps) };
    }
    linspace(start, end, steps)
}

/// [`linspace`] compiled with FMA instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn linspace_fma(start: f32, end: f32, steps: usize) -> Vec<f32> {
    linspace(start, end, steps)
}

#[inline(always)]
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    // A plain loop (not an iterator adapter, which may be compiled out of line, without FMA).
    let mut out = vec![0.0f32; steps];
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) };
    }
    out
}

/// `c10::div_floor_floating`: Python's `//` on floats.
pub(super) fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = fmod(a, b);
    let mut div = (a - m) / b;
    if m != 0.0 && (b < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floor = div.floor();
        if div - floor > 0.5 {
            floor += 1.0;
        }
        floor
    } else {
        0.0f32.copysign(a / b)
    }
}

/// `fmodf(a, b)` (C's `%`, exact), without the slow software `fmodf` in the usual case: in
/// f64, `trunc(a/b)` is the exact truncated quotient of two float32s below 2^24 (the
/// quotient's rounding error, under 2^-29, is less than its distance to any other integer,
/// at least 2^-24), and `a − q·b` is then exact (`q·b` needs at most 48 bits, and the
/// remainder fits in b's precision).
fn fmod(a: f32, b: f32) -> f32 {
    let (x, y) = (f64::from(a), f64::from(b));
    let q = (x / y).trunc();
    if q.abs() < 16_777_216.0 && y.is_finite() {
        // `copysign`: C's fmod keeps the dividend's sign on a zero remainder.
        ((x - q * y) as f32).copysign(a)
    } else {
        a % b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_fmod_equals_fmodf() {
        // Bit patterns from a fixed LCG: every sign, magnitude and quotient range, plus edges.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            f32::from_bits((state >> 32) as u32)
        };
        let edges = [0.0, -0.0, 1.0, -1.0, 3.0, 0.1, 1e-30, 1e30, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE];
        let mut pairs: Vec<(f32, f32)> = edges.iter().flat_map(|&a| edges.iter().map(move |&b| (a, b))).collect();
        pairs.extend((0..200_000).map(|_| (next(), next())));
        // Quotients near the 2^24 switch and exact multiples.
        pairs.extend((0..2_000).map(|i| (16_777_216.0 * 0.37 + i as f32, 0.37)));
        pairs.extend((1..2_000).map(|i| (0.125 * i as f32, 0.125)));
        for (a, b) in pairs {
            if b == 0.0 {
                continue;
            }
            let (fast, libm) = (fmod(a, b), a % b);
            assert!(fast.to_bits() == libm.to_bits() || (fast.is_nan() && libm.is_nan()), "fmod({a:e}, {b:e})");
        }
    }

    #[test]
    fn cascade_sum_differs_from_a_running_sum() {
        let x: Vec<f32> = (0..2048).map(|i| 1.0 + (i as f32) * 1e-3).collect();
        let sequential = x.iter().fold(0.0f32, |a, &v| a + v);
        let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let cascade = torch_sum_f32(&x);
        assert!((f64::from(cascade) - exact).abs() <= (f64::from(sequential) - exact).abs());
        assert_eq!(torch_sum_f32(&[1.0, 2.0, 3.0]), 6.0);
        // torch 2.15 `torch.sum` of this vector on an AVX-512 machine (the 8-lane AVX2 kernel);
        // a 16-lane cascade gives 1249554349.
        let x: Vec<f32> = (0..2048)
            .map(|i| {
                let v = ((i * 7919) % 1009) as f32 / 13.0;
                v * v
            })
            .collect();
        assert_eq!(torch_sum_f32(&x).to_bits(), 1249554348);
    }
}
