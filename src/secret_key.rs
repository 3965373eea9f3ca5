//! The deployment's key of the hashes computed from secrets
//! ([`ttpflow_dataflows::secret`]).
//!
//! Read from `TTPFLOW_HASH_KEY` (64 hex digits) when set, else from the key file: the
//! configuration's `hash_key_file` (`--hash-key-file`), by default
//! `$XDG_STATE_HOME/ttpflow/hash.key` or `~/.local/state/ttpflow/hash.key`. A key file that
//! does not exist is created with a new random key, readable by its owner only. Every run
//! and every process of a deployment must use the same key: the ids of credential tags
//! include a prefix of a keyed hash. The key itself is never logged or printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ttpflow_dataflows::secret::SecretKey;

/// The environment variable that gives the key itself.
pub const KEY_ENV: &str = "TTPFLOW_HASH_KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{KEY_ENV} must be 64 hexadecimal digits (32 bytes)")]
    BadEnv,
    #[error("the hash key file \"{}\" must hold 64 hexadecimal digits (32 bytes)", .0.display())]
    BadFile(PathBuf),
    #[error("no hash key file given and neither XDG_STATE_HOME nor HOME is set: give --hash-key-file")]
    NoPlace,
    #[error("failed to read or create the hash key file \"{}\"", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for a new hash key: {0}")]
    Random(String),
}

/// The default key file.
pub fn default_file() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".local/state"))
    })?;
    Some(state.join("ttpflow").join("hash.key"))
}

/// The deployment's key: from the environment, else from `file` (or the default file),
/// created when absent.
pub fn load(file: Option<&Path>) -> Result<SecretKey, KeyError> {
    if let Some(text) = std::env::var_os(KEY_ENV) {
        return parse(text.to_str().unwrap_or_default()).ok_or(KeyError::BadEnv);
    }
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => default_file().ok_or(KeyError::NoPlace)?,
    };
    let io = |source| KeyError::Io { path: path.clone(), source };
    let read = |text: String| parse(&text).ok_or_else(|| KeyError::BadFile(path.clone()));
    match std::fs::read_to_string(&path) {
        Ok(text) => read(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create(&path) {
            Ok(key) => Ok(key),
            // Another process created it first: use its key.
            Err(Created::Exists) => std::fs::read_to_string(&path).map_err(io).and_then(read),
            Err(Created::Io(source)) => Err(io(source)),
            Err(Created::Random(message)) => Err(KeyError::Random(message)),
        },
        Err(source) => Err(io(source)),
    }
}

enum Created {
    Io(std::io::Error),
    Random(String),
    Exists,
}

/// Writes a new random key to `path` (mode 0600; never over an existing file).
fn create(path: &Path) -> Result<SecretKey, Created> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Created::Random(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Created::Io)?;
    }
    // Written whole to a file of its own, then linked into place: a process that reads the
    // key file finds it complete or absent, and of two that create it at once one wins and
    // the other reads its key.
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(|e| Created::Random(e.to_string()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let staging = path.with_extension(format!("new.{}.{tag}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let written = options
        .open(&staging)
        .and_then(|mut file| writeln!(file, "{hex}").and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::hard_link(&staging, path));
    let _ = std::fs::remove_file(&staging);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Created::Exists),
        Err(e) => return Err(Created::Io(e)),
    }
    tracing::info!(file = %path.display(), "created a new hash key");
    Ok(SecretKey::new(bytes))
}

fn parse(text: &str) -> Option<SecretKey> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(SecretKey::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_file_is_created_once_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/ttpflow/hash.key");
        let first = create(&path).ok().expect("created");
        assert!(matches!(create(&path), Err(Created::Exists)), "never over an existing key");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&text), Some(first));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(parse("zz"), None);
        assert_eq!(parse(&"0g".repeat(32)), None);
        assert_eq!(parse(&format!(" {}\n", "ab".repeat(32))), Some(SecretKey::new([0xab; 32])));
    }

    #[test]
    fn processes_that_create_the_key_at_once_get_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttpflow/hash.key");
        let keys: Vec<SecretKey> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| match create(&path) {
                        Ok(key) => key,
                        Err(Created::Exists) => parse(&std::fs::read_to_string(&path).unwrap()).expect("a whole key"),
                        Err(Created::Io(e)) => panic!("{e}"),
                        Err(Created::Random(e)) => panic!("{e}"),
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key for all");
        let left: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["hash.key"], "no staging file is left");
    }
}
