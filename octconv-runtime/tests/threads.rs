//! `threads::tune_candle_pool` sets candle's spin limit once and leaves a user's setting alone (one
//! test in its own binary: it changes the process environment).

use octconv_runtime::threads::{tune_candle_pool, CANDLE_SPIN_LIMIT};

#[test]
fn candle_spin_limit_is_set_unless_the_user_set_it() {
    let var = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    std::env::remove_var(var);
    assert!(tune_candle_pool());
    assert_eq!(std::env::var(var).unwrap(), CANDLE_SPIN_LIMIT.to_string());
    std::env::set_var(var, "123");
    assert!(!tune_candle_pool(), "a value the user set is kept");
    assert_eq!(std::env::var(var).unwrap(), "123");
}
