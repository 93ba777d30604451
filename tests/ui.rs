//! Compile-fail suite for `octnet!`: every checker diagnostic is a compile error at the right token.
//! The expected output is in `tests/ui/*.stderr`; refresh it with
//! `TRYBUILD=overwrite cargo test --release --test ui` (rustc 1.95, pinned in rust-toolchain.toml).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
