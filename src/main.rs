fn main() {
    std::process::exit(qc::driver::main());
}
