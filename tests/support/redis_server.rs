//! A real `redis-server` (Debian's package) on a free loopback port, persistence off, for
//! the shared-store tests. The test owns the process: it can freeze it (`SIGSTOP`, a hung
//! Redis), kill it (`SIGKILL`, a Redis gone) and start it again on the same port. Only
//! this PID is ever signalled; it is killed when the value is dropped.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::free_port;
use super::within;

/// A redis-server owned by the test.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

impl Redis {
    /// Starts redis-server on a free port.
    pub async fn start() -> Redis {
        Redis::start_with(free_port(), None).await
    }

    /// Starts redis-server requiring this password.
    pub async fn with_password(password: &str) -> Redis {
        Redis::start_with(free_port(), Some(password.to_owned())).await
    }

    async fn start_with(port: u16, password: Option<String>) -> Redis {
        let mut redis = Redis {
            child: None,
            port,
            password,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec![
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
        ];
        if let Some(password) = &self.password {
            args.extend(["--requirepass", password.as_str()]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need Debian's redis-server \
                     package (apt-get install -y redis-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        within(async {
            while self.query(&["PING"]).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Runs one command on a fresh connection (1 s bound).
    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let work = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cmd = redis::cmd(args[0]);
            for arg in &args[1..] {
                cmd.arg(*arg);
            }
            cmd.query_async(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(1), work).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "timed out",
            ))),
        }
    }

    /// The keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        match self.query(&["KEYS", pattern]).await.expect("KEYS") {
            redis::Value::Array(items) => items
                .into_iter()
                .map(|v| redis::from_redis_value::<String>(&v).expect("key"))
                .collect(),
            other => panic!("KEYS answered {other:?}"),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on the pid of our own child with a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Freezes the server: connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: persistence is off).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: as in `signal`; a frozen server must be thawed to die promptly.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.kill();
    }
}
