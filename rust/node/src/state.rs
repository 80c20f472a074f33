//! The state directory: one process at a time (an exclusive lock on `node.lock`), the secret
//! key (`secret_key`, hex, mode 0600), the paired devices (`devices.json`) and the delivered
//! message ids (`delivered/`, see `delivered.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::kdf::SessionKeys;
use crate::wire::DeviceInfo;

pub const LOCK_FILE: &str = "node.lock";
pub const KEY_FILE: &str = "secret_key";
pub const DEVICES_FILE: &str = "devices.json";

/// One paired device as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub endpoint_id: String,
    pub name: String,
    pub device_type: String,
    pub os: String,
    pub app_version: String,
    /// Our directional session keys with it (hex).
    pub send: String,
    pub receive: String,
    pub sas: String,
    pub paired_at: u64,
}

impl Device {
    pub fn new(peer: &[u8; 32], info: &DeviceInfo, keys: &SessionKeys, sas: &str) -> Self {
        Self {
            endpoint_id: hex(peer),
            name: info.name.clone(),
            device_type: info.device_type.clone(),
            os: info.os.clone(),
            app_version: info.app_version.clone(),
            send: hex(&keys.send),
            receive: hex(&keys.receive),
            sas: sas.to_owned(),
            paired_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    pub fn id(&self) -> Result<[u8; 32]> {
        unhex32(&self.endpoint_id)
    }

    pub fn keys(&self) -> Result<SessionKeys> {
        Ok(SessionKeys {
            send: unhex32(&self.send)?,
            receive: unhex32(&self.receive)?,
        })
    }
}

#[derive(Default, Serialize, Deserialize)]
struct DevicesFile {
    version: u32,
    devices: Vec<Device>,
}

pub fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

pub fn unhex32(s: &str) -> Result<[u8; 32]> {
    let raw = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.trim().as_bytes())
        .context("not hex")?;
    raw.try_into()
        .map_err(|_| anyhow::anyhow!("expected 32 bytes"))
}

/// Replaces `dir/name` atomically: a temporary file in the same directory (mode 0600,
/// created exclusively), fsync, rename, then fsync of the directory so the rename itself
/// survives a crash.
pub fn write_atomic_in(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of {}", dir.display()))?;
    Ok(())
}

/// An open, locked state directory.
pub struct StateDir {
    pub dir: PathBuf,
    _lock: File,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            bail!("{} is in use by another process", dir.display());
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn secret_key(&self) -> Result<iroh::SecretKey> {
        let path = self.dir.join(KEY_FILE);
        if path.exists() {
            let text = fs::read_to_string(&path)?;
            return Ok(iroh::SecretKey::from_bytes(&unhex32(&text)?));
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let key = iroh::SecretKey::from_bytes(&raw);
        self.write_atomic(KEY_FILE, hex(&raw).as_bytes())?;
        Ok(key)
    }

    /// Replaces `name` atomically (see [`write_atomic_in`]).
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        write_atomic_in(&self.dir, name, data)
    }

    pub fn load_devices(&self) -> Result<Vec<Device>> {
        let path = self.dir.join(DEVICES_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let file: DevicesFile = serde_json::from_slice(&fs::read(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(file.devices)
    }

    /// Atomic replace (write a temporary file, fsync, rename, fsync the directory).
    pub fn save_devices(&self, devices: &[Device]) -> Result<()> {
        let data = serde_json::to_vec_pretty(&DevicesFile {
            version: 1,
            devices: devices.to_vec(),
        })?;
        self.write_atomic(DEVICES_FILE, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "iroh-pair-node-test-{name}-{}-{}",
            std::process::id(),
            crate::messaging::new_message_id()[0]
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_written_atomically_with_private_modes() {
        let d = tmpdir("key");
        fs::create_dir_all(&d).expect("mkdir");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        let state = StateDir::open(&d).expect("open");
        assert_eq!(mode(&d), 0o700, "the directory is tightened to 0700");
        let key = state.secret_key().expect("key");
        let path = d.join(KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 64);
        // the same key comes back, and no temporary file is left behind
        assert_eq!(state.secret_key().expect("again").public(), key.public());
        let names: Vec<String> = fs::read_dir(&d)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        drop(state);
        fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up_a_stale_temporary() {
        let d = tmpdir("atomic");
        let state = StateDir::open(&d).expect("open");
        // a temporary left by a crashed writer with our pid does not block the next write
        let stale = d.join(format!(".{DEVICES_FILE}.{}.tmp", std::process::id()));
        fs::write(&stale, b"partial").expect("stale");
        state.save_devices(&[]).expect("save");
        assert!(!stale.exists());
        assert_eq!(mode(&d.join(DEVICES_FILE)), 0o600);
        assert!(state.load_devices().expect("load").is_empty());
        // a failed write (the target is a directory) leaves the old file and no temporary
        fs::create_dir(d.join("blocked")).expect("mkdir");
        assert!(state.write_atomic("blocked", b"x").is_err());
        assert!(fs::read_dir(&d).expect("list").all(|e| {
            !e.expect("e")
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        }));
        drop(state);
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
