//! Which file tailsrv serves: [`FileId`], an identity that tells a replaced or truncated
//! file from the one before, across restarts too.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

/// Which file a generation is: the same across server restarts, different once the file is
/// replaced or truncated. Clients compare it for equality only (HTTP's `Tailsrv-File`,
/// the `tailsrv_file_info` metric); its text is otherwise opaque and may gain parts.
///
/// Why device, inode and birth time? Device and inode name the file while it exists, but a
/// file system reuses a deleted file's inode number, often at once (rotate, then recreate);
/// the birth time (statx) tells the new file from the old. Where the file system keeps no
/// birth time, that part is 0 and the identity is device and inode alone.
///
/// Why the truncations? Device, inode and birth time tell two files apart, but copytruncate
/// keeps the file and throws away its contents: a client resuming at an offset needs to know
/// that its offset now points into other bytes. The count is this server's own (it starts
/// at 0 when the server does), so after a restart a truncated file's identity changes once
/// more: a client then checks its bytes again, which costs a little and loses nothing.
///
/// This is the one place the identity is made: whatever else should change it belongs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// The device the file is on.
    pub dev: u64,
    /// Its inode number.
    pub ino: u64,
    /// Nanoseconds since the epoch the file was created, where the filesystem records it.
    pub birth: Option<i128>,
    /// Truncations this server has seen since it opened the file.
    pub truncations: u64,
}

impl FileId {
    /// The identity of an open file, not yet seen truncated.
    pub fn of(file: &File) -> std::io::Result<FileId> {
        let meta = file.metadata()?;
        let birth = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128);
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            birth,
            truncations: 0,
        })
    }

    /// The same file after one more truncation.
    pub fn truncated(self) -> FileId {
        FileId {
            truncations: self.truncations + 1,
            ..self
        }
    }
}

/// `DEV-INODE-BIRTH` in hexadecimal (BIRTH `0` where unknown), and `-tN` after N
/// truncations: one token, safe in a header or a metric label.
impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x}-{:x}",
            self.dev,
            self.ino,
            self.birth.unwrap_or(0)
        )?;
        if self.truncations > 0 {
            write!(f, "-t{}", self.truncations)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_differ_after_a_truncation_and_read_as_one_token() {
        let id = FileId {
            dev: 0x803,
            ino: 42,
            birth: Some(0x1234),
            truncations: 0,
        };
        assert_eq!(id.to_string(), "803-2a-1234");
        assert_eq!(id.truncated().to_string(), "803-2a-1234-t1");
        assert_ne!(id, id.truncated());
        let unknown = FileId { birth: None, ..id };
        assert_eq!(unknown.truncated().truncated().to_string(), "803-2a-0-t2");
    }

    #[test]
    fn file_id_is_stable_for_a_file_and_changes_when_it_is_replaced() {
        let dir = std::env::temp_dir().join(format!("tailsrv-fileid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"one").unwrap();
        let first = FileId::of(&File::open(&path).unwrap()).unwrap();
        // Reopened (as a restarted server would) and grown: the same file.
        std::fs::write(&path, b"one two").unwrap();
        assert_eq!(FileId::of(&File::open(&path).unwrap()).unwrap(), first);
        // Replaced by rename, with the old one kept open so its inode cannot be reused.
        let _old = File::open(&path).unwrap();
        std::fs::write(dir.join("g"), b"new").unwrap();
        std::fs::rename(dir.join("g"), &path).unwrap();
        let second = FileId::of(&File::open(&path).unwrap()).unwrap();
        assert_ne!(second, first);
        assert_ne!(second.to_string(), first.to_string());
        let text = first.to_string();
        assert_eq!(text.split('-').count(), 3, "{text}");
        assert!(
            text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
