//! A real, throw-away PostgreSQL for tests and benchmarks: `initdb` into a
//! temp dir, `postgres` on a free loopback port (TCP only, trust auth for the
//! loopback), run as `nobody` when the tests run as root, stopped when the
//! [`TestPostgres`] is dropped or, for [`TestPostgres::shared`], when the test
//! process exits (a watchdog shell loop watches the test process).
//!
//! Binaries: `AUTHSTAMP_PG_BIN` (a folder), else `initdb` on `PATH`, else the
//! newest `/usr/lib/postgresql/*/bin`. No PostgreSQL means a loud failure,
//! never a skipped test: `.ci/run` installs Debian's `postgresql`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The database superuser created by `initdb`.
pub const USER: &str = "authstamp";
/// Unprivileged account that owns the cluster when the tests run as root.
const RUN_AS: &str = "nobody";
/// Present while [`TestPostgres::restart`] stops the server: the supervisor
/// starts it again instead of removing it.
const RESTART_FLAG: &str = "restart";

pub struct TestPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    as_root: bool,
    /// The watchdog shell (its child is the postmaster).
    supervisor: Option<std::process::Child>,
    next_db: AtomicU32,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUTHSTAMP_PG_BIN") {
        return PathBuf::from(dir);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file());
    if let Some(dir) = on_path {
        // Debian links initdb into PATH; resolve to the real folder so that
        // postgres and initdb come from one version.
        if let Ok(real) = std::fs::canonicalize(dir.join("initdb")) {
            if let Some(parent) = real.parent() {
                return parent.to_path_buf();
            }
        }
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL not found: install Debian's `postgresql` (see .ci/run) or set AUTHSTAMP_PG_BIN",
    )
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `command args…`, as `nobody` when we are root.
fn command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", RUN_AS, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl TestPostgres {
    /// One server for the whole test process, stopped when the process ends.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(TestPostgres::start)
    }

    /// A new server of its own, stopped on drop (or when the process ends).
    pub fn start() -> TestPostgres {
        let bin = bin_dir();
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("authstamp-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        if as_root {
            let uid = Command::new("id")
                .args(["-u", RUN_AS])
                .output()
                .expect("id -u nobody");
            let uid: u32 = String::from_utf8_lossy(&uid.stdout)
                .trim()
                .parse()
                .expect("uid of nobody");
            std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown PostgreSQL dir");
        }
        let data = dir.path().join("data");
        let out = command(as_root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "--encoding=UTF8", "--no-sync"])
            .args(["--locale=C"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.path().join("postgres.log");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = crate::process::free_port();
            // The shell stops the server when the test process is gone
            // (`kill -0` would fail across users: watch /proc instead), and
            // starts it again after a stop that `restart` asked for.
            let script = format!(
                "while :; do \
                 {postgres} -D {data} -p {port} -c listen_addresses=127.0.0.1 \
                 -c unix_socket_directories= -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB \
                 >>{log} 2>&1 & pm=$!; \
                 ( while [ -d /proc/{parent} ] && kill -0 $pm 2>/dev/null; do sleep 0.5; done; \
                   kill -INT $pm 2>/dev/null ) & \
                 wait $pm; \
                 [ -f {restart} ] && [ -d /proc/{parent} ] || break; rm -f {restart}; \
                 done; rm -rf {dir}/data {log} {restart}; rmdir {dir} 2>/dev/null",
                postgres = bin.join("postgres").display(),
                data = data.display(),
                log = log.display(),
                restart = dir.path().join(RESTART_FLAG).display(),
                dir = dir.path().display(),
                parent = std::process::id(),
            );
            let mut supervisor = command(as_root, Path::new("/bin/sh"))
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start postgres");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && std::fs::read_to_string(&log)
                        .is_ok_and(|l| l.contains("ready to accept connections"))
                {
                    return TestPostgres {
                        dir,
                        port,
                        bin,
                        as_root,
                        supervisor: Some(supervisor),
                        next_db: AtomicU32::new(0),
                    };
                }
                if supervisor.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    let _ = supervisor.kill();
                    let _ = supervisor.wait();
                    last_error = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("PostgreSQL did not start:\n{last_error}");
    }

    /// `postgres://authstamp@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A new empty database; returns its URL.
    pub fn create_database(&self, prefix: &str) -> String {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name: String = format!("{prefix}_{}_{n}", std::process::id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs SQL with `psql`, panicking on failure; returns its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = command(self.as_root, &self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restarts the server as an operator would (`pg_ctl stop -m fast`, then
    /// start) on the same data directory and port; returns once it accepts
    /// connections again. Every client connection is ended.
    pub fn restart(&self) {
        const READY: &str = "ready to accept connections";
        let ready_before = self.log().matches(READY).count();
        let flag = self.dir.path().join(RESTART_FLAG);
        // The supervisor removes it: that needs its directory's write
        // permission, not the file's owner.
        std::fs::write(&flag, b"").expect("restart flag");
        const SHUT_DOWN: &str = "database system is shut down";
        let shut_down_before = self.log().matches(SHUT_DOWN).count();
        // `-W`: pg_ctl only sends the signal. Waiting (`-w`) watches the
        // pid file, which the supervisor may already have written again;
        // the server's log says when it stopped and when it is back.
        let status = command(self.as_root, &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["stop", "-m", "fast", "-W"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(status.success(), "pg_ctl stop failed:\n{}", self.log());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(SHUT_DOWN).count() <= shut_down_before
            || self.log().matches(READY).count() <= ready_before
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not come back:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            // Fast shutdown of the postmaster, then the watchdog ends.
            let _ = command(self.as_root, &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["stop", "-m", "fast", "-w", "-t", "20"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = supervisor.kill();
            let _ = supervisor.wait();
        }
    }
}
