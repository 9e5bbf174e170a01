fn main() {
    // The grammar lives in grammar/; the generated parser goes to OUT_DIR (never the source tree).
    lalrpop::Configuration::new()
        .set_in_dir("grammar")
        .emit_rerun_directives(true)
        .process()
        .expect("grammar/qir.lalrpop failed to compile");
}
