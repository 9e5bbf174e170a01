//! Fuzzes the `.npy` reader qc uses for `qc run --input x=FILE.npy`: any bytes must give a
//! tensor or an error, never a panic or an allocation larger than the input implies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = qc::interp::io::read_npy(data) {
        // What reads back must write and read again to the same shape.
        let again = qc::interp::io::read_npy(&qc::interp::io::write_npy(&t)).expect("qc reads what it writes");
        assert_eq!(again.shape(), t.shape());
    }
});
