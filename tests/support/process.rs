//! The real `outrigger` binary as a child process, for what only a process can show:
//! exit codes, flags and environment, signals.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::within;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs the binary to completion (for `check`, `--help`, errors).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger"));
    cmd.args(args)
        .env_remove("OUTRIGGER_CONFIG")
        .env_remove("OUTRIGGER_UPSTREAM");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().expect("run outrigger")
}

/// A running sidecar process; killed if the test ends while it still runs.
pub struct Process {
    child: Child,
}

impl Process {
    /// Starts the binary with these arguments and environment.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Process {
        Process::spawn_binary(env!("CARGO_BIN_EXE_outrigger"), args, envs)
    }

    /// Starts the binary with its standard output going to `stdout` (its log lines).
    pub fn spawn_logging(args: &[&str], stdout: &std::path::Path) -> Process {
        let file = std::fs::File::create(stdout).expect("create the log file");
        Process::start(
            env!("CARGO_BIN_EXE_outrigger"),
            args,
            &[],
            Stdio::from(file),
        )
    }

    /// Starts this build of the binary (a release build, for measurements).
    pub fn spawn_binary(binary: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
        Process::start(binary, args, envs, Stdio::null())
    }

    fn start(binary: &str, args: &[&str], envs: &[(&str, &str)], stdout: Stdio) -> Process {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_remove("OUTRIGGER_CONFIG")
            .env_remove("OUTRIGGER_UPSTREAM")
            .env_remove("OUTRIGGER_LISTEN")
            .env_remove("OUTRIGGER_ADMIN_LISTEN");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn outrigger");
        Process { child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        within(async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `GET http://addr/ready` until it answers 200.
pub async fn wait_ready(admin: SocketAddr) {
    within(async {
        loop {
            let url = format!("http://{admin}/ready");
            let req = http::Request::get(url)
                .body(http_body_util::Full::default())
                .unwrap();
            if let Ok(resp) = super::client().request(req).await {
                if resp.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
