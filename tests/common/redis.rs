//! A real `redis-server` on a free loopback port, for cluster tests: started,
//! killed, restarted and flushed for real (`scripts/test.sh` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// TLS only (`rediss://`): the CA that signed the server certificate.
    ca: Option<Vec<u8>>,
    /// A replica's master port.
    replica_of: Option<u16>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl RedisServer {
    /// Starts a server with no persistence on a free port.
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            ca: None,
            replica_of: None,
        };
        s.spawn();
        s
    }

    /// Starts a replica of `master` and waits until it has synced.
    #[allow(dead_code)]
    pub fn start_replica(master: &RedisServer) -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            ca: None,
            replica_of: Some(master.port),
        };
        s.spawn();
        for _ in 0..500 {
            let info: String = s.cmd(&["INFO", "replication"]);
            if info.contains("master_link_status:up") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("replica on {} never synced with {}", s.port, master.port);
    }

    /// Starts a server that speaks only TLS, with a certificate for
    /// 127.0.0.1 signed by a fresh CA (written to [`RedisServer::ca_file`]).
    #[allow(dead_code)]
    pub fn start_tls() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsprism test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca, &ca_key)
            .expect("server cert");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write key");
        let mut s = Self {
            port,
            child: None,
            dir,
            ca: Some(ca.pem().into_bytes()),
            replica_of: None,
        };
        s.spawn();
        s
    }

    /// The CA file of a TLS server.
    #[allow(dead_code)]
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        if self.ca.is_some() {
            let file = |f: &str| self.dir.path().join(f).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &file("cert.pem")])
                .args(["--tls-key-file", &file("key.pem")])
                .args(["--tls-ca-cert-file", &file("ca.pem")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        if let Some(master) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server not found: cluster tests need it (`apt-get install -y redis-server`, \
                 which scripts/test.sh runs)",
            );
        self.child = Some(child);
        // Up to 10 s (500 tries 20 ms apart).
        for _ in 0..500 {
            if let Ok(mut c) = self.connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            None => redis::Client::open(self.url())?,
        };
        client.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.connection().expect("connect to redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> u64 {
        let reply: (String, u64) = self.cmd(&["PUBSUB", "NUMSUB", channel]);
        reply.1
    }

    /// SIGKILL: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Sentinel (`redis-server --sentinel`) on a free port that
/// monitors one master under [`Sentinel::MASTER`].
#[allow(dead_code)]
pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Sentinel {
    pub const MASTER: &'static str = "cache-main";

    /// Starts a Sentinel watching `master` (down after `down_after_ms` of
    /// silence, when `quorum` Sentinels agree) and waits until it sees
    /// `replicas` of its replicas.
    pub fn start(master: &RedisServer, quorum: u32, down_after_ms: u64, replicas: usize) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        let m = Self::MASTER;
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {master} {quorum}\n\
                 sentinel down-after-milliseconds {m} {down_after_ms}\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.path().display(),
                master = master.port,
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let s = Self {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..500 {
            let seen = s
                .try_cmd::<Vec<redis::Value>>(&["SENTINEL", "REPLICAS", m])
                .map(|r| r.len());
            if seen.is_ok_and(|n| n >= replicas) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sentinel on {port} did not see {replicas} replica(s) of {m}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c =
            redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    /// The port of the server this Sentinel calls master now.
    pub fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, String)> = self
            .try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER])
            .ok()?;
        addr.and_then(|(_, port)| port.parse().ok())
    }

    /// How many other Sentinels this one knows of.
    pub fn peers(&self) -> usize {
        self.try_cmd::<Vec<redis::Value>>(&["SENTINEL", "SENTINELS", Self::MASTER])
            .map_or(0, |r| r.len())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
