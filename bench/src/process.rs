//! Child processes with their output in log files, a ready line read from
//! stdout, and a kill on drop.

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
    ready: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `command` with stdout and stderr in `<dir>/<name>.{stdout,stderr}.log`;
    /// stdout lines containing `marker` are passed to [`Process::ready_line`].
    pub fn spawn(
        name: &str,
        mut command: Command,
        dir: &Path,
        marker: &str,
    ) -> anyhow::Result<Process> {
        let stdout_log = dir.join(format!("{name}.stdout.log"));
        let stderr_log = dir.join(format!("{name}.stderr.log"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(&stderr_log)?));
        let mut child = command
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (sender, ready) = mpsc::channel();
        let mut log = File::create(&stdout_log)?;
        let marker = marker.to_string();
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
            ready,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ready_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        self.ready.recv_timeout(timeout).map_err(|_| {
            anyhow!(
                "{} not ready after {timeout:?}; see {} and {}",
                self.name,
                self.stdout_log.display(),
                self.stderr_log.display()
            )
        })
    }

    /// The first `http://IP:PORT` of the ready line (`listening on http://IP:PORT …`).
    pub fn listen_url(&mut self, timeout: Duration) -> anyhow::Result<String> {
        Ok(self.listen_urls(timeout)?.swap_remove(0))
    }

    /// Every URL of the ready line, in order (`authstamp serve`: the app
    /// API, then the filter API).
    pub fn listen_urls(&mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let line = self.ready_line(timeout)?;
        let urls: Vec<String> = line
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(str::to_string)
            .collect();
        if urls.is_empty() {
            bail!("{}: unexpected ready line {line:?}", self.name);
        }
        Ok(urls)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

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

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system, all threads) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100
}
