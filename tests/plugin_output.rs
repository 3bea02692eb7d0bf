//! Guest stdout/stderr reach the log. In a test binary of its own: the
//! capture is a thread-local `tracing` subscriber, and tests running beside it
//! in one process (whose guests log through the same callsites from other
//! threads) made its events go missing.

mod plugin_support;

use std::sync::Arc;

use plugin_support::*;
use wsprism::services::{Effect, ExtService};

fn reply_of(effects: &[Effect]) -> (&str, &str) {
    match effects {
        [Effect::Reply { ty, data }] => (ty.as_str(), data.get()),
        other => panic!("expected one reply, got {other:?}"),
    }
}

/// A `tracing` subscriber for the current thread that keeps what it formats.
fn capture_logs() -> (
    Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Buf(Arc::clone(&buf));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// Guest stdout/stderr reach the log (target `wsprism::plugin`, tagged with
/// tenant, plugin and session), one event per line; a flood is cut to the per-call
/// budget and reported once. A current-thread runtime keeps the guest call on
/// this thread, where the capturing subscriber is installed.
#[tokio::test]
async fn guest_output_is_logged_line_by_line_and_bounded() {
    let (logs, _guard) = capture_logs();
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    h.host
        .call(t.call(&s, "faults", "print", None, "null"))
        .await
        .expect("print");
    let text = String::from_utf8(logs.lock().expect("logs").clone()).expect("utf8");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let out = line("hello from faults stdout");
    assert!(
        out.contains(" INFO ") && out.contains("wsprism::plugin"),
        "{out}"
    );
    assert!(
        out.contains("acme") && out.contains("faults") && out.contains("stdout"),
        "{out}"
    );
    // The session the call is about (id 1), in its wire form.
    assert!(out.contains("sid=0000000000000001"), "{out}");
    let err = line("hello from faults stderr");
    assert!(err.contains(" WARN ") && err.contains("stderr"), "{err}");
    assert!(err.contains("sid=0000000000000001"), "{err}");
    line("no newline at the end");

    logs.lock().expect("logs").clear();
    let e = h
        .host
        .call(t.call(&s, "faults", "print-flood", None, "null"))
        .await
        .expect("a flood of prints is not a fault");
    assert_eq!(reply_of(&e), ("print-flood", "true"));
    let text = String::from_utf8(logs.lock().expect("logs").clone()).expect("utf8");
    let lines = text.lines().filter(|l| l.contains("flood line")).count();
    assert!((1..=64).contains(&lines), "{lines} flood lines logged");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("over the per-call budget"))
            .count(),
        1,
        "{text}"
    );
    assert!(text.len() < 32 * 1024, "{} bytes of log", text.len());
}
