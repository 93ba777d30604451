//! `octnet!`: compile-time OctConv models from `.oct` specs.
//!
//! ```ignore
//! octconv::octnet! {
//!     /// WRN-28-10, α = 0.25
//!     pub struct Wrn28x10 = wrn(n = 4, k = 10, alpha = 0.25);
//! }
//! octconv::octnet! {
//!     use "../specs/custom.oct";            // relative to this .rs file
//!     pub struct Custom = custom(width = 32);
//! }
//! octconv::octnet! {
//!     model tiny(c: int = 8, alpha: float = 0.5) {
//!         input [3, 16, 16];
//!         octconv(c, kernel = 3, alpha = alpha); bn(); relu();
//!         merge(); global_avg_pool(); linear(10);
//!     }
//!     pub struct Tiny = tiny();
//! }
//! let net = octconv::octnet!(wrn(n = 1, k = 2, alpha = 0.25)).build(vb)?;
//! ```
//!
//! The body is parsed and checked by `octconv-spec` (the grammar and checker of `octconv check`); every
//! diagnostic becomes a compile error at the offending token (inline specs and calls) or at the
//! `use "…"` literal (file specs, with `path:line:col` and a caret snippet in the message). The
//! generated code is `octconv_spec::codegen`'s, the same that `octconv gen` writes.

mod errors;
mod input;
mod spanned;

use proc_macro::TokenStream;

/// Turns `.oct` specs into typed candle modules; see the crate documentation for the forms.
/// Set `OCTCONV_MACRO_TIMING=1` while building to print each expansion's duration.
#[proc_macro]
pub fn octnet(tokens: TokenStream) -> TokenStream {
    let start = std::time::Instant::now();
    let out = input::expand(tokens.into());
    if std::env::var_os("OCTCONV_MACRO_TIMING").is_some() {
        eprintln!(
            "octnet!: expanded in {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    out.into()
}
