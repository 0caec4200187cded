//! Fuzzes the config parser: any text must give a config or diagnostics with a place, never a
//! panic. Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run config` from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = sekisho_config::parse(text, "fuzz.toml") {
            for diagnostic in error.diagnostics {
                assert!(diagnostic.line >= 1 && diagnostic.column >= 1);
            }
        }
    }
});
