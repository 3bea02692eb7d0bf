//! A raw RFC 6455 client over a plain `TcpStream`: hand-built frames (masked or
//! not, any opcode, reserved bits, declared lengths that lie) and a minimal
//! frame reader, for conformance and hostile-input tests that a well-behaved
//! client library refuses to produce.
//!
//! Owns: frame encoding ([`frame`], [`header`], [`masked`]), the upgrade
//! request ([`upgrade_request`], [`http_exchange`]) and one connection
//! ([`RawWs`]) that reads server frames back.
//! Used by: the gateway's `tests/gateway/conformance.rs` and `tests/hostile_transport.rs`
//! (a dev-dependency) and the soak driver's attackers (`wsprism-soak`).
//! Must not: know the gateway's protocol above the frame layer; this is a
//! WebSocket client, any server will do.
//!
//! # Panics
//! This is test equipment: a failed connect, write or read that the caller did
//! not ask to tolerate panics with the reason, which fails the test (or, in the
//! soak driver, ends that one attack attempt).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opcode: continuation frame.
pub const CONT: u8 = 0x0;
/// Opcode: text frame.
pub const TEXT: u8 = 0x1;
/// Opcode: binary frame.
pub const BINARY: u8 = 0x2;
/// Opcode: close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode: ping frame.
pub const PING: u8 = 0x9;
/// Opcode: pong frame.
pub const PONG: u8 = 0xA;

/// How long a read waits before the test gives up.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// Encodes one frame. `rsv` is the three reserved bits (0..=7); `mask` is the
/// masking key (client frames must be masked; `None` sends an unmasked frame).
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = header(fin, rsv, opcode, payload.len() as u64, mask);
    match mask {
        Some(k) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Only the header of a frame declaring `len` payload bytes (the payload may
/// never follow: huge declared lengths).
pub fn header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out
}

/// A masked, final, rsv-free frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload, Some(rand::random()))
}

/// A close frame payload: code (big-endian) and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The FIN bit: last frame of a message.
    pub fin: bool,
    /// The three reserved bits (0..=7); a server without extensions sends 0.
    pub rsv: u8,
    /// The opcode ([`TEXT`], [`CLOSE`], ...).
    pub opcode: u8,
    /// Whether the frame was masked (server frames must not be).
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame (`None`: empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// How the server ended the TCP connection after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eof {
    /// FIN: an orderly shutdown.
    Clean,
    /// RST or another error.
    Reset,
    /// Still open after the wait.
    Open,
}

/// A raw client connection after a successful (101) upgrade.
pub struct RawWs {
    /// The socket, for tests that write or shut it down directly.
    pub stream: TcpStream,
    /// Bytes read but not yet returned as a frame.
    buf: Vec<u8>,
}

/// Sends a raw HTTP request and returns the response head (status line and
/// headers) plus any bytes after it.
pub async fn http_exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String, Vec<u8>) {
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(READ_WAIT, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, buf[end..].to_vec())
}

/// The upgrade request for `path_and_query`.
pub fn upgrade_request(addr: SocketAddr, path_and_query: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

impl RawWs {
    /// Connects and upgrades; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::upgrade(stream, addr, path_and_query).await
    }

    /// Like [`connect`](Self::connect) with the socket's receive buffer set to
    /// about `recv_buffer` bytes before connecting (the kernel may double it),
    /// so a client that reads slowly holds little in its own kernel and the
    /// server's side holds the backlog, as with a slow client across a network.
    pub async fn connect_with_recv_buffer(
        addr: SocketAddr,
        path_and_query: &str,
        recv_buffer: u32,
    ) -> Self {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::upgrade(stream, addr, path_and_query).await
    }

    async fn upgrade(mut stream: TcpStream, addr: SocketAddr, path_and_query: &str) -> Self {
        stream.set_nodelay(true).expect("nodelay");
        let (status, head, rest) =
            http_exchange(&mut stream, &upgrade_request(addr, path_and_query, "")).await;
        assert_eq!(status, 101, "upgrade refused: {head}");
        Self { stream, buf: rest }
    }

    /// Writes raw bytes (one or more frames, or any garbage).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// Like [`send`](Self::send) but tolerates a connection the server already cut.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads until `want` bytes are buffered; `false` on EOF, error or timeout.
    async fn fill(&mut self, want: usize, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = vec![0u8; 64 * 1024];
        while self.buf.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
        true
    }

    /// The next frame, or `None` when the connection ended or `wait` passed.
    pub async fn read_frame_within(&mut self, wait: Duration) -> Option<Frame> {
        if !self.fill(2, wait).await {
            return None;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if !self.fill(4, wait).await {
                    return None;
                }
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                if !self.fill(10, wait).await {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let key = if masked {
            if !self.fill(at + 4, wait).await {
                return None;
            }
            let k = [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ];
            at += 4;
            Some(k)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits");
        if !self.fill(at + len, wait).await {
            return None;
        }
        let mut payload: Vec<u8> = self.buf[at..at + len].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0f,
            masked,
            payload,
        })
    }

    /// The next frame within [`READ_WAIT`], or `None` when the connection ended.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        self.read_frame_within(READ_WAIT).await
    }

    /// The next data frame (pings, pongs skipped), panicking on anything else.
    pub async fn read_data(&mut self) -> Frame {
        loop {
            let f = self.read_frame().await.expect("a data frame");
            match f.opcode {
                PING | PONG => continue,
                TEXT | BINARY | CONT => return f,
                _ => panic!("expected data, got {f:?}"),
            }
        }
    }

    /// Reads until a close frame and returns it (data, pings skipped); `None` if
    /// the connection ended without one.
    pub async fn read_close(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_frame().await?;
            assert!(!f.masked, "server frames must not be masked: {f:?}");
            if f.opcode == CLOSE {
                return Some(f);
            }
        }
    }

    /// Reads until a close frame; returns its code (`Some(None)`: an empty close).
    pub async fn close_code(&mut self) -> Option<Option<u16>> {
        self.read_close().await.map(|f| f.close_code())
    }

    /// Answers a close, then waits for the server to end the TCP connection.
    pub async fn finish_close(&mut self, wait: Duration) -> Eof {
        let _ = self.try_send(&masked(CLOSE, &[])).await;
        self.wait_eof(wait).await
    }

    /// Reads at most `chunk` bytes every `every` (a trickle reader: it keeps
    /// the connection alive but cannot keep up) until the server ends the TCP
    /// connection or `wait` passes. Returns how the connection ended and the
    /// bytes read. A reset is noticed as soon as the kernel has it, even while
    /// bytes the server sent earlier are still unread.
    pub async fn trickle_until_closed(
        &mut self,
        chunk: usize,
        every: Duration,
        wait: Duration,
    ) -> (Eof, usize) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; chunk.max(1)];
        let mut total = 0;
        while tokio::time::Instant::now() < deadline {
            if matches!(self.stream.take_error(), Ok(Some(_)) | Err(_))
                || self.stream.peer_addr().is_err()
            {
                return (Eof::Reset, total);
            }
            match tokio::time::timeout(every, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) => return (Eof::Clean, total),
                Ok(Ok(n)) => {
                    total += n;
                    tokio::time::sleep(every).await;
                }
                Ok(Err(_)) => return (Eof::Reset, total),
                Err(_) => {}
            }
        }
        (Eof::Open, total)
    }

    /// Waits for the server to end the TCP connection (any frames are dropped).
    pub async fn wait_eof(&mut self, wait: Duration) -> Eof {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => return Eof::Open,
                Ok(Ok(0)) => return Eof::Clean,
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return Eof::Reset,
            }
        }
    }
}
