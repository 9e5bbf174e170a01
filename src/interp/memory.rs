//! The interpreter's memory budget: the most bytes one op may allocate at once.
//!
//! A graph's shapes come from its text and its data, so one op can ask for terabytes (an
//! `expand` to `f32[100000,100000,100]`); left alone, the allocator aborts the process. Before
//! an op runs, [`crate::interp::eval_op`] sizes its result from the type rule applied to the
//! operands' real shapes, and kernels size their large scratch buffers (im2col columns,
//! broadcast copies, GEMM blocks) with [`check_scratch`]: anything over the budget is an error
//! naming the op, instead of an abort. Sizes are computed with checked arithmetic, so a shape
//! whose element count overflows is over budget too.
//!
//! The budget is set once per process ([`set_max_memory`], from `--max-memory`); by default it
//! is [`DEFAULT_FRACTION`] of the machine's memory ([`physical_memory`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::ir::{DType, TensorType};

/// The default budget as a fraction (numerator, denominator) of physical memory: 3/4. One op's
/// allocation above that would leave too little for the live activations, the weights, the
/// input data and the rest of the system: the run would thrash or be killed by the OOM killer
/// rather than fail cleanly. The total (not the currently available) memory is used so that the
/// same run succeeds or fails the same way whatever else the machine is doing.
pub const DEFAULT_FRACTION: (u64, u64) = (3, 4);

/// 0: not set, use the default.
static MAX_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Sets the budget for every later run in this process (`--max-memory`).
pub fn set_max_memory(bytes: u64) {
    MAX_MEMORY.store(bytes.max(1), Ordering::Relaxed);
}

/// The budget in bytes: the one set, or [`DEFAULT_FRACTION`] of physical memory (no limit but
/// the address space when that is unknown).
pub fn max_memory() -> u64 {
    match MAX_MEMORY.load(Ordering::Relaxed) {
        0 => default_max_memory(),
        set => set,
    }
}

fn default_max_memory() -> u64 {
    static DEFAULT: OnceLock<u64> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let (num, den) = DEFAULT_FRACTION;
        physical_memory().map_or(isize::MAX as u64, |m| m / den * num)
    })
}

/// The memory this process may use: `MemTotal` of `/proc/meminfo`, lowered to the cgroup's
/// limit when it runs in a container with one (`memory.max`, or v1's `limit_in_bytes`).
pub fn physical_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Parses a `--max-memory` size: a number of bytes with an optional binary suffix `K`, `M`,
/// `G` or `T` (powers of 1024; `KB`, `KiB`, … are accepted too), such as `512M` or `8G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let shift = match suffix.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}` is not a size: write a number of bytes with K, M, G or T, such as 512M")),
    };
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a size: it must start with a whole number"))?;
    match n.checked_mul(1 << shift) {
        Some(0) => Err("the memory budget must be more than 0 bytes".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("`{text}` is too large")),
    }
}

/// A byte count for messages: exact, with a binary-unit rounding when large.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = None;
    let mut value = bytes as f64;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{bytes} bytes ({value:.1} {u})"),
        None => format!("{bytes} bytes"),
    }
}

/// The bytes a tensor of `dtype` with `dims` holds (`None` when that does not fit in a `u64`).
/// Like ndarray, a shape whose non-zero dims multiply past `isize::MAX` bytes cannot exist even
/// when another dim is 0: that is reported as `None` too.
pub fn tensor_bytes(dtype: DType, dims: impl IntoIterator<Item = u64>) -> Option<u64> {
    let (mut all, mut nonzero) = (1u64, dtype.size_bytes() as u64);
    for d in dims {
        all = all.checked_mul(d)?;
        nonzero = nonzero.checked_mul(d.max(1)).filter(|&n| n <= isize::MAX as u64)?;
    }
    all.checked_mul(dtype.size_bytes() as u64)
}

/// The bytes the fully known `ty` holds: `Some(None)` when it overflows, `None` when a dim is
/// unknown.
pub fn type_bytes(ty: &TensorType) -> Option<Option<u64>> {
    let dims: Option<Vec<u64>> = ty.shape.iter().map(|d| d.known()).collect();
    Some(tensor_bytes(ty.dtype, dims?))
}

/// Checks that `bytes` (`None`: more than a `u64` holds) fit in the budget; the error says
/// what needs them.
pub fn check(bytes: Option<u64>, what: impl FnOnce() -> String) -> Result<(), String> {
    let budget = max_memory();
    match bytes {
        Some(b) if b <= budget => Ok(()),
        Some(b) => Err(format!(
            "{} needs {}, more than the memory budget of {}",
            what(),
            format_bytes(b),
            format_bytes(budget)
        )),
        None => Err(format!("{} has more elements than memory can address", what())),
    }
}

/// Checks a kernel's scratch buffer of `elements` (`None`: overflowed while computing it)
/// elements of `T` against the budget.
pub fn check_scratch<T>(what: &str, elements: Option<usize>) -> Result<(), String> {
    let bytes = elements.and_then(|n| (n as u64).checked_mul(std::mem::size_of::<T>() as u64));
    check(bytes, || format!("its {what}")).map_err(|m| format!("{m} (raise it with `--max-memory`)"))
}

/// The product of `factors`, `None` on overflow.
pub fn product(factors: &[usize]) -> Option<usize> {
    factors.iter().try_fold(1usize, |acc, &f| acc.checked_mul(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("3kb"), Ok(3 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn byte_counts_overflow_to_none() {
        assert_eq!(tensor_bytes(DType::F32, [2, 3]), Some(24));
        assert_eq!(tensor_bytes(DType::F32, [0, 1 << 40]), Some(0));
        assert_eq!(tensor_bytes(DType::F32, [0, 1 << 40, 1 << 40]), None);
        assert_eq!(tensor_bytes(DType::F64, [u64::MAX]), None);
    }
}
