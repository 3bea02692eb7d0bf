//! Config examples stay alive: every `tests/fixtures/config/*.yaml` parses, except
//! `bad_*.yaml`, whose errors must contain each line of the matching `.err` file.

use std::path::Path;

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn good_examples_parse_and_bad_ones_report_every_expected_error() {
    let files = fixtures();
    assert!(files.len() >= 4);
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let result = wsprism::config::load(&path);
        if name.starts_with("bad_") {
            let err = match result {
                Ok(_) => panic!("{name} was accepted"),
                Err(e) => e.to_string(),
            };
            let expected = std::fs::read_to_string(path.with_extension("err"))
                .unwrap_or_else(|_| panic!("{name} needs a .err file"));
            for line in expected.lines().filter(|l| !l.trim().is_empty()) {
                assert!(err.contains(line), "{name}: expected {line:?} in:\n{err}");
            }
        } else if let Err(e) = result {
            panic!("{name} refused:\n{e}");
        }
    }
}
