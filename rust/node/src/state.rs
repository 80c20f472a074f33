//! The state directory: one process at a time (an exclusive lock on `node.lock`), the secret
//! key (`secret_key`, hex, mode 0600) and the paired devices (`devices.json`).

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
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(hex(&raw).as_bytes())?;
        f.sync_all()?;
        Ok(key)
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

    /// Atomic replace (write a temporary file, fsync, rename).
    pub fn save_devices(&self, devices: &[Device]) -> Result<()> {
        let path = self.dir.join(DEVICES_FILE);
        let tmp = self.dir.join(format!("{DEVICES_FILE}.tmp"));
        let data = serde_json::to_vec_pretty(&DevicesFile {
            version: 1,
            devices: devices.to_vec(),
        })?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }
}
