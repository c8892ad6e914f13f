//! Child processes with their output kept in log files, readiness read from
//! what they print, and a kill on drop so no test leaves a process behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Process {
    name: String,
    child: Option<Child>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    ready_line: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command`, writing stdout and stderr to `<log_dir>/<name>.{stdout,stderr}.log`.
    /// Every stdout line containing `ready_marker` is passed to
    /// [`Process::wait_for_line`].
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path, ready_marker: &str) -> Process {
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stderr_file = File::create(&stderr_log).expect("create stderr log");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({:?}): {e}", command.get_program()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, ready_line) = mpsc::channel();
        let mut log = File::create(&stdout_log).expect("create stdout log");
        let marker = ready_marker.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains(&marker) {
                    let _ = sender.send(line);
                }
            }
        });
        Process {
            name: name.to_string(),
            child: Some(child),
            stdout_log,
            stderr_log,
            ready_line,
        }
    }

    /// The first stdout line with the ready marker, or a panic that shows the
    /// process's logs when it does not come in time or the process dies.
    pub fn wait_for_line(&mut self, timeout: Duration) -> String {
        match self.ready_line.recv_timeout(timeout) {
            Ok(line) => line,
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "{} not ready after {timeout:?} (exit status {status:?})\n{}",
                    self.name,
                    self.logs()
                );
            }
        }
    }

    /// The first URL of the ready line (`… listening on http://IP:PORT …`).
    pub fn wait_for_listen_url(&mut self, timeout: Duration) -> String {
        self.wait_for_listen_urls(timeout).swap_remove(0)
    }

    /// Every URL of the ready line, in order: for `authstamp serve`, the app
    /// API and then the filter API.
    pub fn wait_for_listen_urls(&mut self, timeout: Duration) -> Vec<String> {
        let line = self.wait_for_line(timeout);
        let urls = urls_in(&line);
        assert!(!urls.is_empty(), "bad ready line: {line}");
        urls
    }

    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {} stdout ({}) ---\n{}\n--- {} stderr ({}) ---\n{}",
            self.name,
            self.stdout_log.display(),
            read(&self.stdout_log),
            self.name,
            self.stderr_log.display(),
            read(&self.stderr_log)
        )
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Resident memory in KiB (Linux `/proc/<pid>/status`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `http://` and `https://` words of a line, in order.
pub fn urls_in(line: &str) -> Vec<String> {
    line.split_whitespace()
        .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
        .map(|word| word.trim_end_matches([',', ';', ')']).to_string())
        .collect()
}

/// `authstamp serve`'s ready line: `(app API URL, filter API URL)`.
pub fn service_urls(line: &str) -> (String, String) {
    match urls_in(line).as_slice() {
        [app, filter] => (app.clone(), filter.clone()),
        _ => panic!("not the ready line of authstamp serve: {line}"),
    }
}

/// A free loopback port (bound then released; good enough for tests that
/// cannot pass port 0 to the program).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
