//! `octnet!`: compile-time OctConv models from `.oct` specs.
//!
//! Placeholder crate that fixes the workspace layout. The macro itself is issue #4: it will parse and
//! check specs with `octconv-spec` (the same grammar and checker as `octconv check`) and emit typed
//! candle modules. Nothing is exported yet.
