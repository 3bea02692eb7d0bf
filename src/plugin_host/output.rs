//! A guest's stdout and stderr, routed to `tracing`.
//!
//! Owns: the WASI output streams given to every instance. Each complete line
//! becomes one event with target `wsprism::plugin` and fields `tenant`,
//! `plugin`, `sid` (the session the call is about, when there is one),
//! `stream` (stdout at `info`, stderr at `warn`; a Rust guest's panic
//! message arrives on stderr). Lines are cut to [`MAX_LOG_LINE_BYTES`], and one
//! guest call may log at most [`MAX_OUTPUT_BYTES_PER_CALL`] bytes in at most
//! [`MAX_OUTPUT_LINES_PER_CALL`] lines; the rest is dropped and reported once
//! per call, so a printing loop cannot flood the logs. Writes always succeed
//! (a failing stdout makes Rust's `println!` panic), never block and never
//! wait for a worker: the stream is plain synchronous code on the guest's call.
//! `instance.rs` brackets every guest call with [`GuestOutput::begin_call`] and
//! [`GuestOutput::end_call`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::limits::{MAX_LOG_LINE_BYTES, MAX_OUTPUT_BYTES_PER_CALL, MAX_OUTPUT_LINES_PER_CALL};
use crate::realtime::SessionId;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// A line being assembled.
#[derive(Debug, Default)]
struct Line {
    buf: Vec<u8>,
    /// Bytes past [`MAX_LOG_LINE_BYTES`] were dropped from this line.
    cut: bool,
}

#[derive(Debug, Default)]
struct State {
    lines: [Line; 2],
    /// Bytes and lines logged in the current call.
    bytes: usize,
    events: usize,
    /// Bytes dropped in the current call because its budget ran out.
    dropped: usize,
    /// The session the current call is about, if any (logged as `sid`).
    sid: Option<SessionId>,
}

/// The output of one instance (both streams); cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct GuestOutput {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tenant: Arc<str>,
    plugin: Arc<str>,
    state: Mutex<State>,
}

impl GuestOutput {
    /// Output of an instance of `plugin` serving `tenant`.
    pub(crate) fn new(tenant: Arc<str>, plugin: Arc<str>) -> Self {
        Self {
            shared: Arc::new(Shared {
                tenant,
                plugin,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The WASI stdout stream.
    pub(crate) fn stdout(&self) -> Sink {
        Sink {
            shared: Arc::clone(&self.shared),
            stream: Stream::Stdout,
        }
    }

    /// The WASI stderr stream.
    pub(crate) fn stderr(&self) -> Sink {
        Sink {
            shared: Arc::clone(&self.shared),
            stream: Stream::Stderr,
        }
    }

    /// A guest call about `sid` (none in `init`) starts: leftovers of a
    /// call that was cut are flushed and the per-call budget starts again.
    pub(crate) fn begin_call(&self, sid: Option<SessionId>) {
        let mut st = self.shared.state.lock();
        if st.bytes != 0 || st.events != 0 || st.dropped != 0 || has_partial(&st) {
            self.shared.finish(&mut st);
        }
        st.sid = sid;
    }

    /// A guest call ended: lines without a final newline are logged as they
    /// are, and dropped output is reported.
    pub(crate) fn end_call(&self) {
        let mut st = self.shared.state.lock();
        if st.bytes != 0 || st.dropped != 0 || has_partial(&st) {
            self.shared.finish(&mut st);
        }
    }
}

fn has_partial(st: &State) -> bool {
    st.lines.iter().any(|l| !l.buf.is_empty() || l.cut)
}

impl Shared {
    fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut st = self.state.lock();
        while !bytes.is_empty() {
            let (part, newline) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            bytes = &bytes[part.len() + usize::from(newline)..];
            let cost = part.len() + usize::from(newline);
            if st.bytes + cost > MAX_OUTPUT_BYTES_PER_CALL || st.events >= MAX_OUTPUT_LINES_PER_CALL
            {
                st.dropped += cost;
                continue;
            }
            st.bytes += cost;
            let line = &mut st.lines[stream.index()];
            let room = MAX_LOG_LINE_BYTES.saturating_sub(line.buf.len());
            if part.len() > room {
                line.buf.extend_from_slice(&part[..room]);
                line.cut = true;
            } else {
                line.buf.extend_from_slice(part);
            }
            if newline {
                self.emit(&mut st, stream);
            }
        }
    }

    /// Logs the line of `stream` and clears it.
    fn emit(&self, st: &mut State, stream: Stream) {
        st.events += 1;
        let line = &mut st.lines[stream.index()];
        let mut end = line.buf.len();
        if end > 0 && line.buf[end - 1] == b'\r' {
            end -= 1;
        }
        let text = String::from_utf8_lossy(&line.buf[..end]);
        let (tenant, plugin, truncated) = (&*self.tenant, &*self.plugin, line.cut);
        let sid = st.sid.map(tracing::field::display);
        match stream {
            Stream::Stdout => {
                tracing::info!(target: "wsprism::plugin", tenant, plugin, sid, stream = "stdout", truncated, "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "wsprism::plugin", tenant, plugin, sid, stream = "stderr", truncated, "{text}")
            }
        }
        line.buf.clear();
        line.cut = false;
    }

    /// Ends the current call's output: partial lines, the drop report, and a
    /// fresh budget.
    fn finish(&self, st: &mut State) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = &st.lines[stream.index()];
            if !line.buf.is_empty() || line.cut {
                self.emit(st, stream);
            }
        }
        if st.dropped > 0 {
            tracing::warn!(
                target: "wsprism::plugin",
                tenant = &*self.tenant,
                plugin = &*self.plugin,
                sid = st.sid.map(tracing::field::display),
                dropped_bytes = st.dropped,
                max_bytes = MAX_OUTPUT_BYTES_PER_CALL,
                max_lines = MAX_OUTPUT_LINES_PER_CALL,
                "plugin output over the per-call budget; the rest was dropped"
            );
        }
        st.bytes = 0;
        st.events = 0;
        st.dropped = 0;
    }
}

/// One of the two streams of a [`GuestOutput`], as WASI sees it.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    shared: Arc<Shared>,
    stream: Stream,
}

impl IsTerminal for Sink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Sink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Always ready: a write never waits.
const PERMIT_BYTES: usize = 64 * 1024;

impl OutputStream for Sink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.shared.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for Sink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.shared.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_a_call_is_bounded() {
        let out = GuestOutput::new(Arc::from("t"), Arc::from("p"));
        let mut s = out.stdout();
        out.begin_call(None);
        let long = vec![b'x'; MAX_LOG_LINE_BYTES * 3];
        OutputStream::write(&mut s, Bytes::from(long)).expect("write");
        OutputStream::write(&mut s, Bytes::from_static(b"\nnext")).expect("write");
        {
            let st = out.shared.state.lock();
            assert_eq!(st.events, 1, "one event for the long line");
            assert_eq!(st.lines[0].buf, b"next");
        }
        for _ in 0..10_000 {
            OutputStream::write(&mut s, Bytes::from_static(b"flood\n")).expect("write");
        }
        {
            let st = out.shared.state.lock();
            assert!(st.events <= MAX_OUTPUT_LINES_PER_CALL);
            assert!(st.bytes <= MAX_OUTPUT_BYTES_PER_CALL);
            assert!(st.dropped > 0);
        }
        out.end_call();
        let st = out.shared.state.lock();
        assert_eq!((st.bytes, st.events, st.dropped), (0, 0, 0));
        assert!(!has_partial(&st));
    }
}
