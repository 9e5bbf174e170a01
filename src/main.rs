// mimalloc instead of glibc's malloc: qc builds and drops graphs of many small objects and
// big arenas, and glibc hands large freed blocks back to the OS only to fault them in again
// (convert-pt2e on the 1600-block chain: 47 → 37 ms; front end at 10k ops: +45%).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(qc::driver::main());
}
