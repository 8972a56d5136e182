//! The configuration loader (`control_plane::config::Config::from_toml`):
//! a TOML file and `SESSIONGATE_*` environment overrides, as `sessiongate
//! serve` reads them at start and on every reload.
//!
//! Input: the file's text, then optionally a NUL byte and environment
//! variables, one `NAME=value` a line. Properties:
//! - it never panics: a bad file is an error;
//! - an error names what was wrong: the variable for an override, the key
//!   for an invalid value;
//! - a configuration that loads, written out as TOML again, loads again
//!   (it re-validates) to the same configuration.
#![no_main]

use control_plane::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let config = match Config::from_toml(file, None, env.clone()) {
        Ok(c) => c,
        Err(ConfigError::Env { var, message }) => {
            assert!(
                env.iter().any(|(k, _)| *k == var),
                "error names {var:?}, which is not one of the variables: {message}"
            );
            return;
        }
        Err(ConfigError::Invalid { key, message }) => {
            assert!(
                !key.is_empty(),
                "an invalid value without its key: {message}"
            );
            return;
        }
        Err(_) => return,
    };
    let written = toml::to_string(&config)
        .unwrap_or_else(|e| panic!("a loaded configuration cannot be written: {e}: {config:?}"));
    let reloaded = Config::from_toml(&written, None, Vec::new())
        .unwrap_or_else(|e| panic!("a loaded configuration does not load again: {e}\n{written}"));
    assert_eq!(reloaded, config, "written and loaded again:\n{written}");
});
