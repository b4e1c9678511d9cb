//! Reading the files a user names (images, the config, TLS material, passwords, labels):
//! regular files only, and never more than a stated size, so that `/dev/zero`, a FIFO or
//! a multi-gigabyte file given by mistake is a clear error instead of a hang or an
//! out-of-memory kill.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest config, password, certificate or label file read.
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

/// Reads a whole regular file of at most `max_bytes`. `what` names the file's role in
/// errors ("image", "mqtt.ca", …).
pub fn read_capped(path: &Path, what: &'static str, max_bytes: u64) -> Result<Vec<u8>> {
    let mut file = open_regular(path, what)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, what, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::input(
            path,
            format!("{what} is larger than the {} limit", Bytes(max_bytes)),
        ));
    }
    Ok(bytes)
}

/// Reads a whole regular UTF-8 text file of at most `max_bytes`.
pub fn read_text(path: &Path, what: &'static str, max_bytes: u64) -> Result<String> {
    String::from_utf8(read_capped(path, what, max_bytes)?)
        .map_err(|_| Error::input(path, format!("{what} is not UTF-8 text")))
}

/// Opens a file for reading after checking that it is a regular file. The check is made
/// before opening (opening a FIFO blocks until a writer comes) and again on the open file
/// (the path may have been swapped in between); the open does not block.
fn open_regular(path: &Path, what: &'static str) -> Result<File> {
    let before = std::fs::metadata(path).map_err(|e| Error::io(path, what, e))?;
    refuse_unless_regular(path, what, &before)?;
    let file = open_nonblocking(path).map_err(|e| Error::io(path, what, e))?;
    let after = file.metadata().map_err(|e| Error::io(path, what, e))?;
    refuse_unless_regular(path, what, &after)?;
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn refuse_unless_regular(path: &Path, what: &str, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = kind_of(meta);
    Err(Error::input(
        path,
        format!("{what} must be a regular file, this is {kind}"),
    ))
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    "not a regular file"
}

/// A byte count as people write it: `64 MiB`, `1 MiB`, `300 B`.
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1 << 20;
        const KIB: u64 = 1 << 10;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} B"),
        }
    }
}

/// The SHA-256 of a file's bytes, in lowercase hex: what identifies a model.
pub fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 1 << 16];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => context.update(&buffer[..n]),
        }
    }
    let digest = context.finish();
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(path: &Path, max: u64) -> String {
        crate::error::with_causes(&read_capped(path, "image", max).unwrap_err())
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let e = error(Path::new("/dev/zero"), 1 << 20);
        assert!(
            e.ends_with("image must be a regular file, this is a device"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = error(dir.path(), 1 << 20);
        assert!(e.ends_with("this is a directory"), "{e}");
        let fifo = dir.path().join("x.jpg");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = error(&fifo, 1 << 20);
        assert!(e.ends_with("this is a FIFO (named pipe)"), "{e}");
    }

    #[test]
    fn reads_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(&path, vec![7u8; 2048]).unwrap();
        assert_eq!(read_capped(&path, "image", 2048).unwrap().len(), 2048);
        let e = error(&path, 2047);
        assert!(e.ends_with("image is larger than the 2047 B limit"), "{e}");
        let e = error(&path, 1024);
        assert!(e.ends_with("image is larger than the 1 KiB limit"), "{e}");
    }

    #[test]
    fn a_symlink_loop_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jpg");
        let b = dir.path().join("b.jpg");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = error(&a, 1 << 20);
        assert!(e.contains("symbolic links"), "{e}");
    }
}
