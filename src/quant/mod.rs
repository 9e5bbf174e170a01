//! Quantization arithmetic with PyTorch's exact float32 semantics (see
//! `../shared/reference/pt2e.md` §2.2 and §3): reciprocal-multiply quantization with
//! round-half-to-even, and `calculate_qparams` from a min/max range.

pub mod observer;

use crate::ir::quant::QScheme;
use crate::ir::verifier::OpCheck;
use crate::ir::DType;

/// The checks quantization adds to the IR verifier: an observer's `stats` must be statistics
/// `convert` can turn into qparams ([`observer::verify_stats`]).
pub const OP_CHECKS: &[OpCheck] = &[OpCheck { op: crate::ops::OBSERVER, check: observer::verify_stats }];

/// `fl32(1 / scale)`: PT2E multiplies by the float32 reciprocal of the scale (a double
/// division rounded once to f32 equals the f32 reciprocal of the f32 scale here).
pub fn inv_scale(scale: f64) -> f32 {
    (1.0 / scale) as f32
}

/// One element of `quantize_per_tensor`: `clamp(round(x·inv) + zp, qmin, qmax)`, computed in
/// float32 (the zero point is added after rounding), then cast.
pub fn quantize_value(x: f32, inv: f32, zero_point: i64, qmin: i64, qmax: i64) -> f32 {
    let q = round_half_even(x * inv) + zero_point as f32;
    // torch.clamp propagates NaN.
    if q.is_nan() {
        q
    } else {
        q.clamp(qmin as f32, qmax as f32)
    }
}

/// `nearbyintf` (round half to even), inline: from 2^23 up every float32 is an integer, so
/// adding and subtracting 2^23 rounds |v| below it exactly, ties to even (the default
/// rounding mode); the sign is put back (-0.3 → -0.0, as `nearbyintf`). NaN and infinities
/// pass through. The libm call this replaces dominated quantize kernels.
#[inline]
pub fn round_half_even(v: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    if v.abs() < TWO_23 {
        ((v.abs() + TWO_23) - TWO_23).copysign(v)
    } else {
        v
    }
}

/// `(q - zp) · scale` in float32, as `dequantize_per_tensor` computes it.
pub fn dequantize_value(q: i64, zero_point: i64, scale: f32) -> f32 {
    (q as f32 - zero_point as f32) * scale
}

/// A float already rounded and clamped to an integer range, cast the way x86 casts it: NaN
/// becomes the bit pattern `cvttss2si` gives (0 in every type narrower than 32 bits).
pub fn float_to_int(v: f32, dtype: DType) -> i64 {
    if v.is_nan() {
        return match dtype {
            DType::I32 => i32::MIN.into(),
            DType::I64 => i64::MIN,
            _ => 0,
        };
    }
    v as i64
}

/// One element of ATen's fake-quantize kernel: `q = zp + nearbyint(x·inv)` as an integer (the
/// zero point is added after rounding), clamped, then `(q - zp)·scale` in float32.
pub fn fake_quantize_value(x: f32, inv: f32, scale: f32, zero_point: i64, qmin: i64, qmax: i64) -> f32 {
    let q = zero_point.saturating_add(float_to_int((x * inv).round_ties_even(), DType::I64));
    (q.clamp(qmin, qmax) - zero_point) as f32 * scale
}

/// ATen's `quant_utils::ChooseQuantizationParams` (identical to fbgemm's), which
/// `fused_moving_avg_obs_fake_quant` uses during QAT forwards (pt2e.md §2.5): unlike
/// [`calculate_qparams`] it has no eps, floors the scale at 6.1e-5 (rescaling the range), makes
/// a symmetric range one step wider below zero, and picks the zero point from whichever end of
/// the range loses less precision. Arithmetic is C++'s: float where the operands are float,
/// double where one is, and the scale rounded to float at the end. The integer arithmetic is in
/// i64 (C++'s `int` would overflow for an i32 range).
pub fn choose_quantization_params(min: f32, max: f32, qmin: i64, qmax: i64, preserve_sparsity: bool) -> (f32, i64) {
    const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;
    let (mut min, mut max) = (min, max);
    if min < 0.0 && max > 0.0 && preserve_sparsity {
        let symmetric_qmin = -((qmax - qmin) / 2 + 1);
        let symmetric_qmax = (qmax - qmin) / 2;
        let (a, b) = ((min / symmetric_qmin as f32).abs(), (max / symmetric_qmax as f32).abs());
        // `std::max(a, b)`: `a < b ? b : a`.
        let max_scale = f64::from(if a < b { b } else { a });
        min = (max_scale * symmetric_qmin as f64) as f32;
        max = (max_scale * symmetric_qmax as f64) as f32;
    }
    // `std::min(min, 0.f)`, `std::max(max, 0.f)`: NaN stays.
    if 0.0 < min {
        min = 0.0;
    }
    if max < 0.0 {
        max = 0.0;
    }
    let steps = (qmax - qmin) as f64;
    let mut scale = (f64::from(max) - f64::from(min)) / steps;
    if scale as f32 == 0.0 || (1.0 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    if scale < f64::from(SMALL_SCALE_THRESHOLD) {
        let original = scale as f32;
        scale = f64::from(SMALL_SCALE_THRESHOLD);
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * steps as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * steps as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / original;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let (from_min, from_max) = (f64::from(min) / scale, f64::from(max) / scale);
    let min_error = qmin.abs() as f64 - from_min.abs();
    let max_error = qmax.abs() as f64 - from_max.abs();
    let mut initial = if min_error < max_error { qmin as f64 - from_min } else { qmax as f64 - from_max };
    if min < 0.0 && max > 0.0 && preserve_sparsity {
        initial = (qmin + qmax) as f64 / 2.0;
    }
    let zero_point = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        initial.round_ties_even() as i64
    };
    (scale as f32, zero_point)
}

/// What `calculate_qparams` needs to know about the target quantization.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct QRange {
    pub qmin: i64,
    pub qmax: i64,
    pub qscheme: QScheme,
    pub dtype: DType,
    /// The smallest scale (PT2E's observers use 2^-12; PyTorch's default is f32 epsilon).
    pub eps: f32,
    /// Whether `qmin`/`qmax` were given explicitly (true for every spec a quantizer builds); it
    /// only changes the uint8 symmetric zero point.
    pub customized_range: bool,
}

/// `torch.max(a, b)` / `torch.min(a, b)` on floats: NaN propagates (unlike `f32::max`), and on
/// a tie the first operand is returned (`std::max`/`std::min` in the scalar kernel).
pub(crate) fn torch_maximum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a < b {
        b
    } else {
        a
    }
}

pub(crate) fn torch_minimum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// `float32 → int32` as x86's `cvttss2si` does it (PyTorch's `.to(torch.int)` on CPU): NaN and
/// out-of-range values become `i32::MIN`.
fn f32_to_i32_x86(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// The scale and zero point PyTorch's `_calculate_qparams` derives from an observed range,
/// in float32 throughout.
///
/// For `per_channel_affine_float_qparams` the zero point returned here is 0; use
/// [`calculate_float_qparams`] for the float zero point.
pub fn calculate_qparams(min_val: f32, max_val: f32, range: &QRange) -> (f32, i64) {
    let QRange { qmin, qmax, qscheme, dtype, eps, customized_range } = *range;
    if min_val == f32::INFINITY && max_val == f32::NEG_INFINITY {
        return (1.0, 0);
    }
    let min_neg = torch_minimum(min_val, 0.0);
    let max_pos = torch_maximum(max_val, 0.0);
    if qscheme.is_symmetric() {
        let amax = torch_maximum(-min_neg, max_pos);
        // The divisor is a Python float: 127.0 for [-127, 127], 127.5 for [-128, 127].
        let divisor = ((qmax - qmin) as f64 / 2.0) as f32;
        let scale = torch_maximum(amax / divisor, eps);
        let zero_point = match dtype {
            DType::U8 if customized_range => (qmin + qmax).div_euclid(2),
            DType::U8 => 128,
            _ => 0,
        };
        return (scale, zero_point);
    }
    if qscheme == QScheme::PerChannelAffineFloatQParams {
        return (calculate_float_qparams(min_val, max_val, range).0, 0);
    }
    let scale = torch_maximum((max_pos - min_neg) / (qmax - qmin) as f32, eps);
    // `quant_min - round(min_neg / scale).to(int32)` is int32 arithmetic (wrapping), then clamped.
    let rounded = f32_to_i32_x86((min_neg / scale).round_ties_even());
    let zero_point = match i32::try_from(qmin) {
        Ok(qmin) => i64::from(qmin.wrapping_sub(rounded)),
        Err(_) => qmin - i64::from(rounded),
    };
    (scale, zero_point.clamp(qmin, qmax))
}

/// `per_channel_affine_float_qparams` (pt2e.md §2.2 step 4): `scale = (max - min) / (qmax - qmin)`,
/// replaced by 1.0 unless it is greater than `eps`, and the float zero point `-min / scale`.
pub fn calculate_float_qparams(min_val: f32, max_val: f32, range: &QRange) -> (f32, f32) {
    let scale = (max_val - min_val) / (range.qmax - range.qmin) as f32;
    // `torch.where(scale > eps, scale, 1.0)`: a NaN scale becomes 1.0 too.
    let scale = if scale > range.eps { scale } else { 1.0 };
    (scale, -min_val / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(qmin: i64, qmax: i64, qscheme: QScheme, dtype: DType, eps: f32, customized_range: bool) -> QRange {
        QRange { qmin, qmax, qscheme, dtype, eps, customized_range }
    }

    #[test]
    fn inline_rounding_equals_nearbyint() {
        let mut bits = 0x9e37_79b9u32;
        let samples = (0..1_000_000).map(|_| {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f32::from_bits(bits)
        });
        let edges = [0.5, 1.5, 2.5, -0.5, -2.5, -0.3, 0.0, -0.0, 8_388_607.5, 8_388_608.0, -8_388_609.0, 1e30];
        for v in samples.chain(edges).chain([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]) {
            let (a, b) = (round_half_even(v), v.round_ties_even());
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{v:e}: {a:e} vs {b:e}");
        }
    }

    #[test]
    fn reciprocal_multiply_differs_from_division_at_ties() {
        // pytorch/pytorch#139464: 757.5 / 15 rounds to 50, but x · fl32(1/15) rounds to 51.
        assert_eq!(quantize_value(757.5, inv_scale(15.0), 0, -1000, 1000), 51.0);
        assert_eq!((757.5f32 / 15.0).round_ties_even(), 50.0);
    }

    #[test]
    fn round_half_even_then_zero_point_then_clamp() {
        let inv = inv_scale(1.0);
        assert_eq!(quantize_value(2.5, inv, 0, -128, 127), 2.0);
        assert_eq!(quantize_value(3.5, inv, 0, -128, 127), 4.0);
        assert_eq!(quantize_value(-2.5, inv, 10, -128, 127), 8.0);
        assert_eq!(quantize_value(1000.0, inv, 0, -128, 127), 127.0);
        assert!(quantize_value(f32::NAN, inv, 0, -128, 127).is_nan());
        assert_eq!(float_to_int(f32::NAN, DType::I8), 0);
    }

    #[test]
    fn symmetric_divisors_and_uint8_zero_point() {
        // pt2e.md §2.2: [-1, 2.55] int8 [-128,127] symmetric → 2.55/127.5 = 0.02.
        let (s, zp) = calculate_qparams(
            -1.0,
            2.55,
            &range(-128, 127, QScheme::PerTensorSymmetric, DType::I8, f32::EPSILON, true),
        );
        assert_eq!((s, zp), (2.55f32 / 127.5, 0));
        let (s, _) = calculate_qparams(
            -1.0,
            2.54,
            &range(-127, 127, QScheme::PerTensorSymmetric, DType::I8, 2f32.powi(-12), true),
        );
        assert_eq!(s, 2.54f32 / 127.0);
        let (_, zp) =
            calculate_qparams(-1.0, 2.55, &range(0, 255, QScheme::PerTensorSymmetric, DType::U8, f32::EPSILON, false));
        assert_eq!(zp, 128);
        let (s, zp) =
            calculate_qparams(-1.0, 2.55, &range(0, 127, QScheme::PerTensorSymmetric, DType::U8, f32::EPSILON, true));
        assert_eq!((s, zp), (2.55f32 / 63.5, 63));
    }

    #[test]
    fn fused_fake_quant_qparams_widen_symmetric_ranges_and_floor_small_scales() {
        // Symmetric int8 weights in [-127, 127]: the range becomes [-128·s, 127·s] with
        // s = amax/127, so the scale is amax/127 · 255/254 (pt2e.md §2.5), zero point 0.
        let (s, zp) = choose_quantization_params(-0.5, 1.27, -127, 127, true);
        let ms = f64::from(1.27f32 / 127.0);
        assert_eq!(s, ((f64::from((ms * 127.0) as f32) - f64::from((ms * -128.0) as f32)) / 254.0) as f32);
        assert_eq!(zp, 0);
        // Affine u8: no eps; the zero point comes from the end with the smaller error term.
        let (s, zp) = choose_quantization_params(-1.0, 3.0, 0, 255, false);
        assert_eq!((s, zp), ((4.0f64 / 255.0) as f32, 64));
        // A tiny range: scale 6.1e-5, not eps 2^-12 as `calculate_qparams` would give.
        let (s, zp) = choose_quantization_params(0.0, 1e-4, -128, 127, false);
        assert_eq!((s, zp), (6.1e-5, -128));
        // An empty range gets scale 0.1; both zero-point candidates are exact, and the upper
        // end's error term (|127| − 0) is the smaller one.
        assert_eq!(choose_quantization_params(0.0, 0.0, -128, 127, false), (0.1, 127));
    }

    #[test]
    fn affine_zero_point_and_eps() {
        let (s, zp) =
            calculate_qparams(-1.0, 3.0, &range(-128, 127, QScheme::PerTensorAffine, DType::I8, 2f32.powi(-12), true));
        assert_eq!(s, 4.0f32 / 255.0);
        assert_eq!(zp, -128 - (-1.0f32 / s).round_ties_even() as i64);
        let (s, zp) =
            calculate_qparams(0.0, 0.0, &range(-128, 127, QScheme::PerTensorAffine, DType::I8, 2f32.powi(-12), true));
        assert_eq!((s, zp), (2f32.powi(-12), -128));
        assert_eq!(
            calculate_qparams(
                f32::INFINITY,
                f32::NEG_INFINITY,
                &range(0, 255, QScheme::PerTensorAffine, DType::U8, 1e-5, true)
            ),
            (1.0, 0)
        );
    }
}
