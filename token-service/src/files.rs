//! Files at rest: the data directory is 0700, the SQLite database (with its
//! `-wal` and `-shm`) and the secret files 0600.
//!
//! At start a secret file (master key, admin token) that group or others
//! may read refuses the start, naming the path and the `chmod` to run: it
//! opens the whole vault. A wider data directory only warns: the files in it
//! are 0600 themselves (database files found wider are tightened), and
//! volume mounts are often 0755 or 0777 (Kubernetes `emptyDir`), which a
//! refusal would break; the service itself creates the directory 0700.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// Mode bits of group and others.
#[cfg(unix)]
const GROUP_OTHER: u32 = 0o077;

/// Warns about a data directory that group or others may open.
pub fn warn_if_dir_open(dir: &Path) {
    if let Some(mode) = open_dir_mode(dir) {
        tracing::warn!(
            path = %dir.display(),
            mode = %format_args!("{mode:03o}"),
            "the data directory is open to group or others; run `chmod 700 {}`",
            dir.display()
        );
    }
}

/// The mode of `dir` when it is a directory open to group or others.
fn open_dir_mode(dir: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.permissions().mode() & 0o777;
        (meta.is_dir() && mode & GROUP_OTHER != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses a secret file (master key, admin token) open to group or others.
pub fn require_private_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & GROUP_OTHER != 0 {
                anyhow::bail!(
                    "the secret file {} is readable by group or others (mode {mode:03o}): \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates the SQLite database file 0600 before SQLite opens it (SQLite
/// gives `-wal` and `-shm` the mode of the database), and tightens an
/// existing database, `-wal` or `-shm` that is wider.
pub fn prepare_sqlite_file(db: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("could not create the database {}", db.display()))?;
        for path in [
            db.to_path_buf(),
            with_suffix(db, "-wal"),
            with_suffix(db, "-shm"),
        ] {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode & GROUP_OTHER != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| {
                        format!("could not make {} private (chmod 600)", path.display())
                    })?;
                tracing::warn!(path = %path.display(), mode = %format_args!("{mode:03o}"), "database file was open to group or others; set it to 0600");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_data_directory_open_to_others_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o700);
        assert_eq!(open_dir_mode(dir.path()), None);
        set_mode(dir.path(), 0o750);
        assert_eq!(open_dir_mode(dir.path()), Some(0o750));
        assert_eq!(open_dir_mode(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_secret_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, "x").unwrap();
        set_mode(&key, 0o600);
        require_private_file(&key).unwrap();
        set_mode(&key, 0o640);
        let text = format!("{:#}", require_private_file(&key).unwrap_err());
        assert!(
            text.contains(&format!("chmod 600 {}", key.display())),
            "{text}"
        );
    }

    #[test]
    fn database_files_are_created_and_tightened_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("authstamp.db");
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = with_suffix(&db, "-wal");
        std::fs::write(&wal, "").unwrap();
        set_mode(&db, 0o644);
        set_mode(&wal, 0o644);
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
    }
}
