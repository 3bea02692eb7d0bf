//! Config loader: any text is a config or a list of issues, never a panic, a
//! hang or an allocation blow-up (YAML alias bombs, deep nesting, `${VAR}`
//! expansion). Variables whose name starts with `A` are "set".
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| name.starts_with('A').then(|| format!("value-of-{name}"));
    match wsprism::config::parse_with_env(text, &env) {
        Ok(cfg) => assert_eq!(cfg.version, 1),
        Err(e) => assert!(!e.issues.is_empty()),
    }
});
