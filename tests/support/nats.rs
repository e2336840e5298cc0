//! Test support: a nats-server with JetStream that a test starts on its own loopback port
//! and temporary store, and can stop and restart on the same port and store (the NATS sink
//! and fleet KV tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `$NATS_SERVER`, else PATH, else Debian's /usr/sbin.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server with JetStream, stoppable and restartable on the same port and store.
pub struct Nats {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

impl Nats {
    /// A single server on a free port with a fresh store.
    pub fn start() -> Nats {
        Self::start_with(free_port(), Vec::new())
    }

    pub fn start_with(port: u16, args: Vec<String>) -> Nats {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut nats = Nats {
            port,
            dir,
            args,
            child: None,
            starts: 0,
        };
        nats.spawn();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    /// (Re)starts the process on the same port and store; waits (bounded) for "Server is ready".
    pub fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.join("store"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        self.child = Some(child);
        self.wait_log("Server is ready", Duration::from_secs(20));
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        panic!("nats-server: no {needle:?} within {limit:?}; log:\n{text}");
    }

    /// Graceful stop (SIGTERM: the server flushes its store), bounded.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, for a cluster node that dies.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}
