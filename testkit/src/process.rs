//! Child processes with their output kept in log files, readiness read from
//! what they print, and a kill on drop so no test leaves a process behind.
//! A process that is not ready in time fails with its logs printed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    ready_line: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command`, writing stdout and stderr to `<log_dir>/<name>.{stdout,stderr}.log`.
    /// Every stdout line containing `ready_marker` is passed to
    /// [`Process::wait_for_line`]. Panics when it cannot start.
    pub fn spawn(name: &str, command: Command, log_dir: &Path, ready_marker: &str) -> Process {
        Self::try_spawn(name, command, log_dir, ready_marker).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Process::spawn`] that returns the error (for the benchmarks, which
    /// do not panic).
    pub fn try_spawn(
        name: &str,
        mut command: Command,
        log_dir: &Path,
        ready_marker: &str,
    ) -> anyhow::Result<Process> {
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let stderr_file = File::create(&stderr_log)
            .with_context(|| format!("create {}", stderr_log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        let mut child = command
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (sender, ready_line) = mpsc::channel();
        let mut log = File::create(&stdout_log)
            .with_context(|| format!("create {}", stdout_log.display()))?;
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
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            stdout_log,
            stderr_log,
            ready_line,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The next stdout line with the ready marker, or an error carrying the
    /// process's logs when it does not come in time or the process dies.
    pub fn ready_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.ready_line.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "{} not ready after {timeout:?} (exit status {status:?})\n{}",
                    self.name,
                    self.logs()
                )
            }
        }
    }

    /// [`Process::ready_line`], panicking with the logs.
    pub fn wait_for_line(&mut self, timeout: Duration) -> String {
        self.ready_line(timeout).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Every URL of the ready line, in order: for `authstamp serve`, the app
    /// API and then the filter API.
    pub fn listen_urls(&mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let line = self.ready_line(timeout)?;
        let urls = urls_in(&line);
        if urls.is_empty() {
            bail!("{}: bad ready line {line:?}", self.name);
        }
        Ok(urls)
    }

    /// The first URL of the ready line (`… listening on http://IP:PORT …`).
    pub fn listen_url(&mut self, timeout: Duration) -> anyhow::Result<String> {
        Ok(self.listen_urls(timeout)?.swap_remove(0))
    }

    /// [`Process::listen_url`], panicking with the logs.
    pub fn wait_for_listen_url(&mut self, timeout: Duration) -> String {
        self.wait_for_listen_urls(timeout).swap_remove(0)
    }

    /// [`Process::listen_urls`], panicking with the logs.
    pub fn wait_for_listen_urls(&mut self, timeout: Duration) -> Vec<String> {
        self.listen_urls(timeout)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
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
        rss_kib(self.pid()?)
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

/// A `VmXxx:` line of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process in KiB, from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// CPU time (user + system, all threads) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    Some(ticks * 1_000_000 / 100)
}

impl Process {
    /// SIGTERM, then the exit status once it exits (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {}: {sent}", self.name);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                bail!("{} did not stop on SIGTERM within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An `authstamp serve` whose first stdout line must be its ready line:
/// the app API and filter API URLs are read from it. Its logs live in a
/// folder of its own and are printed when it fails.
pub struct Service {
    pub process: Process,
    /// The app-facing API.
    pub url: String,
    /// The filter listener (token lookups).
    pub filter_url: String,
    _log_dir: tempfile::TempDir,
}

impl Service {
    /// How long `authstamp serve` may take to print its ready line.
    pub const START_TIMEOUT: Duration = Duration::from_secs(60);

    /// Starts `command` (an `authstamp serve …`) and waits for its ready line.
    pub fn start(command: Command) -> Service {
        let log_dir = tempfile::Builder::new()
            .prefix("authstamp-service-")
            .tempdir()
            .expect("log dir");
        // An empty marker: every line counts, so the first one is checked.
        let mut process = Process::spawn("token-service", command, log_dir.path(), "");
        let line = process.wait_for_line(Self::START_TIMEOUT);
        assert!(
            line.starts_with("authstamp listening on "),
            "unexpected first line {line:?}\n{}",
            process.logs()
        );
        let (url, filter_url) = service_urls(&line);
        Service {
            process,
            url,
            filter_url,
            _log_dir: log_dir,
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// SIGTERM; asserts a clean exit within 10 s and returns its stderr.
    pub fn stop(mut self) -> String {
        let status = self
            .process
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.process.logs()));
        assert!(
            status.success(),
            "exit status {status}\n{}",
            self.process.logs()
        );
        self.stderr()
    }
}
