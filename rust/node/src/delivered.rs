//! Delivered message ids per paired device (PROTOCOL.md §13.8), persisted in the state
//! directory.
//!
//! Format: one append-only text log per device, `delivered/<endpoint id hex>.log`, one line
//! per delivered id, `<message id, 32 hex> <unix time in ms>\n`, in the order the ids were
//! recorded. Recording an id is one `write(2)` of 47 bytes on the open log (O_APPEND), with no
//! fsync: it survives the process being killed or crashing as soon as `commit` returns, but
//! after a power loss or an OS crash the ids of the last moments may be lost (their retries
//! are then delivered again: at least once), the same durability as the Python registry's
//! default (`synchronous=NORMAL`). A torn last line (a crash inside the write) is ignored.
//!
//! Bounds: an id is a duplicate for 24 hours, and at most the 10,000 most recent ids per device
//! are kept (oldest dropped first). The log is rewritten atomically (temporary file, fsync,
//! rename, fsync of the directory) with the live ids when it holds more than twice the bound
//! of lines, and at load when it holds stale lines, so it stays under ~1 MB per device.
//!
//! Re-pairing keeps a device's ids; only [`Delivered::forget`] (unpairing) removes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::messaging::MessageId;
use crate::state::{hex, unhex32, write_atomic_in};

/// Subdirectory of the state directory.
pub const DIR: &str = "delivered";
/// An id stays a duplicate this long (ms).
pub const WINDOW_MS: u64 = 24 * 3600 * 1000;
/// At most this many ids per device.
pub const MAX_PER_DEVICE: usize = 10_000;
/// The log is compacted when it holds more lines than this.
const COMPACT_LINES: usize = 2 * MAX_PER_DEVICE;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What to do with an incoming type-0 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not delivered and not being handled: it is now marked in progress; call
    /// [`Delivered::commit`] when the handler returned, or [`Delivered::abandon`] if it failed.
    New,
    /// Delivered before (`DUPLICATE`, 18).
    Duplicate,
    /// Being handled right now (`IN_PROGRESS`, 21).
    InProgress,
}

#[derive(Default)]
struct DeviceIds {
    /// Recording order, oldest first.
    order: VecDeque<(MessageId, u64)>,
    at: HashMap<MessageId, u64>,
    /// Lines in the log file (live or not).
    lines: usize,
    file: Option<File>,
}

impl DeviceIds {
    fn is_live(&self, id: &MessageId, now: u64) -> bool {
        self.at
            .get(id)
            .is_some_and(|&t| t.saturating_add(WINDOW_MS) > now)
    }

    /// Adds in memory and applies the bounds.
    fn push(&mut self, id: MessageId, when: u64, now: u64) {
        if self.at.remove(&id).is_some() {
            // an expired id recorded again (rare): its old place goes
            self.order.retain(|(x, _)| x != &id);
        }
        self.order.push_back((id, when));
        self.at.insert(id, when);
        self.prune(now);
    }

    fn prune(&mut self, now: u64) {
        while let Some(&(old, t)) = self.order.front() {
            let expired = t.saturating_add(WINDOW_MS) <= now;
            if !expired && self.order.len() <= MAX_PER_DEVICE {
                break;
            }
            self.order.pop_front();
            self.at.remove(&old);
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.order.len() * 47);
        for (id, t) in &self.order {
            out.extend_from_slice(line(id, *t).as_bytes());
        }
        out
    }
}

fn line(id: &MessageId, t: u64) -> String {
    format!("{} {t}\n", hex(id))
}

fn parse_line(l: &str) -> Option<(MessageId, u64)> {
    let (id, t) = l.split_once(' ')?;
    if id.len() != 32 {
        return None;
    }
    let raw = data_encoding::HEXLOWER_PERMISSIVE
        .decode(id.as_bytes())
        .ok()?;
    Some((raw.try_into().ok()?, t.parse().ok()?))
}

/// The delivered ids of every device, and the ids being handled.
#[derive(Default)]
pub struct Delivered {
    /// `<state>/delivered`, or `None`: memory only (a node without `--state`).
    dir: Option<PathBuf>,
    devices: HashMap<[u8; 32], DeviceIds>,
    in_progress: HashSet<([u8; 32], MessageId)>,
}

impl Delivered {
    /// Memory only.
    pub fn memory() -> Self {
        Self::default()
    }

    /// Loads the logs under `<state_dir>/delivered` (created if missing, mode 0700), applying
    /// the bounds at `now` (ms); logs with stale lines are compacted, empty ones removed.
    pub fn load(state_dir: &Path, now: u64) -> Result<Self> {
        let dir = state_dir.join(DIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let mut devices = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".log") else {
                continue; // temporaries of an interrupted compaction, anything else
            };
            let Ok(peer) = unhex32(stem) else { continue };
            let text = fs::read(entry.path())?;
            let text = String::from_utf8_lossy(&text);
            let mut ids = DeviceIds::default();
            // only complete lines: a torn last line (no newline) is dropped
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            if !text.is_empty() && !text.ends_with('\n') {
                ids.lines += 1; // forces a compaction, so the next append starts a new line
            }
            for l in complete.split('\n') {
                ids.lines += 1;
                if let Some((id, t)) = parse_line(l) {
                    ids.push(id, t, now);
                }
            }
            devices.insert(peer, ids);
        }
        let mut me = Self {
            dir: Some(dir),
            devices,
            in_progress: HashSet::new(),
        };
        let peers: Vec<[u8; 32]> = me.devices.keys().copied().collect();
        for peer in peers {
            let d = &me.devices[&peer];
            if d.order.is_empty() {
                me.forget(&peer)?;
            } else if d.lines != d.order.len() {
                me.compact(&peer)?;
            }
        }
        Ok(me)
    }

    fn path(&self, peer: &[u8; 32]) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.log", hex(peer))))
    }

    /// Whether `id` from `peer` was delivered within the window before `now`.
    pub fn is_delivered(&self, peer: &[u8; 32], id: &MessageId, now: u64) -> bool {
        self.devices.get(peer).is_some_and(|d| d.is_live(id, now))
    }

    /// How many ids are kept for `peer`.
    #[cfg(test)]
    pub fn count(&self, peer: &[u8; 32]) -> usize {
        self.devices.get(peer).map_or(0, |d| d.order.len())
    }

    /// Checks an incoming message; [`Check::New`] marks it in progress.
    pub fn begin(&mut self, peer: &[u8; 32], id: &MessageId, now: u64) -> Check {
        if self.is_delivered(peer, id, now) {
            return Check::Duplicate;
        }
        if !self.in_progress.insert((*peer, *id)) {
            return Check::InProgress;
        }
        Check::New
    }

    /// The handler failed: nothing is recorded, a retry is delivered.
    pub fn abandon(&mut self, peer: &[u8; 32], id: &MessageId) {
        self.in_progress.remove(&(*peer, *id));
    }

    /// The handler returned: records `id` (appended to the log before this returns) and ends
    /// its in-progress mark, whether the write succeeded or not (on an error the id is still
    /// remembered in memory).
    pub fn commit(&mut self, peer: &[u8; 32], id: &MessageId, now: u64) -> Result<()> {
        self.in_progress.remove(&(*peer, *id));
        let path = self.path(peer);
        let d = self.devices.entry(*peer).or_default();
        d.push(*id, now, now);
        let Some(path) = path else { return Ok(()) };
        if d.file.is_none() {
            d.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            );
        }
        let f = d.file.as_mut().expect("opened above");
        f.write_all(line(id, now).as_bytes())
            .with_context(|| format!("appending to {}", path.display()))?;
        d.lines += 1;
        if d.lines > COMPACT_LINES {
            self.compact(peer)?;
        }
        Ok(())
    }

    /// Rewrites `peer`'s log with its live ids, atomically.
    fn compact(&mut self, peer: &[u8; 32]) -> Result<()> {
        let (Some(dir), Some(d)) = (self.dir.as_ref(), self.devices.get_mut(peer)) else {
            return Ok(());
        };
        d.file = None;
        write_atomic_in(dir, &format!("{}.log", hex(peer)), &d.encode())?;
        d.lines = d.order.len();
        Ok(())
    }

    /// Unpairing: forgets every id of `peer` (its log is removed).
    pub fn forget(&mut self, peer: &[u8; 32]) -> Result<()> {
        self.devices.remove(peer);
        self.in_progress.retain(|(p, _)| p != peer);
        if let Some(path) = self.path(peer) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "iroh-pair-node-delivered-{name}-{}-{}",
            std::process::id(),
            hex(&crate::messaging::new_message_id()[..4])
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn mid(i: u32) -> MessageId {
        let mut m = [0u8; 16];
        m[..4].copy_from_slice(&i.to_be_bytes());
        m
    }

    const A: [u8; 32] = [0xaa; 32];
    const B: [u8; 32] = [0xbb; 32];
    const T0: u64 = 1_800_000_000_000;

    fn deliver(d: &mut Delivered, peer: &[u8; 32], id: MessageId, now: u64) {
        assert_eq!(d.begin(peer, &id, now), Check::New);
        d.commit(peer, &id, now).expect("commit");
    }

    #[test]
    fn a_restart_sees_the_ids_per_device() {
        let dir = tmpdir("restart");
        let mut d = Delivered::load(&dir, T0).expect("load");
        deliver(&mut d, &A, mid(1), T0);
        deliver(&mut d, &A, mid(2), T0 + 1);
        deliver(&mut d, &B, mid(3), T0 + 2);
        drop(d); // the process "dies": no close, no flush beyond the writes
        let mut d = Delivered::load(&dir, T0 + 10).expect("reload");
        assert_eq!(d.begin(&A, &mid(1), T0 + 10), Check::Duplicate);
        assert_eq!(d.begin(&A, &mid(2), T0 + 10), Check::Duplicate);
        assert_eq!(d.begin(&B, &mid(3), T0 + 10), Check::Duplicate);
        // per device: B's id is new for A
        assert_eq!(d.begin(&A, &mid(3), T0 + 10), Check::New);
        assert_eq!(d.count(&A), 2);
        let log = fs::read_to_string(dir.join(DIR).join(format!("{}.log", hex(&A)))).expect("log");
        assert_eq!(log.lines().count(), 2, "{log}");
        assert_eq!(
            fs::metadata(dir.join(DIR)).expect("m").permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn in_progress_until_committed_and_nothing_recorded_on_failure() {
        let mut d = Delivered::memory();
        assert_eq!(d.begin(&A, &mid(1), T0), Check::New);
        assert_eq!(d.begin(&A, &mid(1), T0), Check::InProgress);
        assert_eq!(d.begin(&B, &mid(1), T0), Check::New, "another device's id");
        d.abandon(&A, &mid(1));
        assert!(!d.is_delivered(&A, &mid(1), T0));
        assert_eq!(
            d.begin(&A, &mid(1), T0),
            Check::New,
            "a retry after a failure"
        );
        d.commit(&A, &mid(1), T0).expect("commit");
        assert_eq!(d.begin(&A, &mid(1), T0), Check::Duplicate);
    }

    #[test]
    fn ids_expire_after_24_hours_in_memory_and_at_load() {
        let dir = tmpdir("expiry");
        let mut d = Delivered::load(&dir, T0).expect("load");
        deliver(&mut d, &A, mid(1), T0);
        deliver(&mut d, &A, mid(2), T0 + 3_600_000);
        assert!(d.is_delivered(&A, &mid(1), T0 + WINDOW_MS - 1));
        assert!(!d.is_delivered(&A, &mid(1), T0 + WINDOW_MS));
        // delivered again after the window, and a duplicate again from then on
        assert_eq!(d.begin(&A, &mid(1), T0 + WINDOW_MS), Check::New);
        d.commit(&A, &mid(1), T0 + WINDOW_MS).expect("commit");
        assert_eq!(d.begin(&A, &mid(1), T0 + WINDOW_MS + 5), Check::Duplicate);
        drop(d);
        // a restart after mid(2)'s window: only the renewed mid(1) remains, the log compacted
        let later = T0 + 3_600_000 + WINDOW_MS;
        let d = Delivered::load(&dir, later).expect("reload");
        assert!(!d.is_delivered(&A, &mid(2), later));
        assert!(d.is_delivered(&A, &mid(1), later));
        assert_eq!(d.count(&A), 1);
        let log = fs::read_to_string(dir.join(DIR).join(format!("{}.log", hex(&A)))).expect("log");
        assert_eq!(log, line(&mid(1), T0 + WINDOW_MS));
        drop(d);
        // everything expired: the log goes
        let d = Delivered::load(&dir, later + WINDOW_MS).expect("reload");
        assert_eq!(d.count(&A), 0);
        assert!(!dir.join(DIR).join(format!("{}.log", hex(&A))).exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn at_most_10000_per_device_oldest_dropped_and_the_log_stays_bounded() {
        let dir = tmpdir("bound");
        let mut d = Delivered::load(&dir, T0).expect("load");
        let n = COMPACT_LINES as u32 + 7;
        for i in 0..n {
            deliver(&mut d, &A, mid(i), T0);
        }
        deliver(&mut d, &B, mid(0), T0);
        assert_eq!(d.count(&A), MAX_PER_DEVICE);
        let first_kept = n - MAX_PER_DEVICE as u32;
        assert!(!d.is_delivered(&A, &mid(first_kept - 1), T0));
        assert!(d.is_delivered(&A, &mid(first_kept), T0));
        assert!(d.is_delivered(&A, &mid(n - 1), T0));
        assert!(d.is_delivered(&B, &mid(0), T0), "B's ids are not A's bound");
        let path = dir.join(DIR).join(format!("{}.log", hex(&A)));
        let lines = fs::read_to_string(&path).expect("log").lines().count();
        assert!(lines <= COMPACT_LINES, "{lines} lines");
        drop(d);
        let d = Delivered::load(&dir, T0).expect("reload");
        assert_eq!(d.count(&A), MAX_PER_DEVICE);
        assert!(!d.is_delivered(&A, &mid(first_kept - 1), T0));
        assert!(d.is_delivered(&A, &mid(first_kept), T0));
        assert_eq!(
            fs::read_to_string(&path).expect("log").lines().count(),
            MAX_PER_DEVICE,
            "compacted at load"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn forget_removes_a_device_s_ids_on_disk_too() {
        let dir = tmpdir("forget");
        let mut d = Delivered::load(&dir, T0).expect("load");
        deliver(&mut d, &A, mid(1), T0);
        deliver(&mut d, &B, mid(1), T0);
        d.forget(&A).expect("forget");
        assert_eq!(d.begin(&A, &mid(1), T0), Check::New);
        d.abandon(&A, &mid(1));
        drop(d);
        let d = Delivered::load(&dir, T0).expect("reload");
        assert!(!d.is_delivered(&A, &mid(1), T0));
        assert!(d.is_delivered(&B, &mid(1), T0));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_torn_last_line_and_garbage_are_ignored() {
        let dir = tmpdir("torn");
        fs::create_dir_all(dir.join(DIR)).expect("mkdir");
        let path = dir.join(DIR).join(format!("{}.log", hex(&A)));
        let mut text = line(&mid(1), T0);
        text.push_str("not a line\n");
        text.push_str(&line(&mid(2), T0)[..20]); // a crash inside the write
        fs::write(&path, text).expect("write");
        let mut d = Delivered::load(&dir, T0).expect("load");
        assert!(d.is_delivered(&A, &mid(1), T0));
        assert!(!d.is_delivered(&A, &mid(2), T0));
        // compacted at load, so the next append starts on a fresh line
        deliver(&mut d, &A, mid(3), T0);
        drop(d);
        let d = Delivered::load(&dir, T0).expect("reload");
        assert!(d.is_delivered(&A, &mid(1), T0) && d.is_delivered(&A, &mid(3), T0));
        assert_eq!(d.count(&A), 2);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
