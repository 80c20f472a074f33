//! Processes inside lab devices: the Python agents and the servers.
//!
//! A [`Proc`] is a child started with `Device::spawn_command` (so it lives in the device's
//! network namespace). Its stdout is read line by line: every line is forwarded as a JSON
//! output line tagged with the process's label (a non-JSON line becomes
//! `{"event":"stdout","line":...}`) and queued for the scenario, which waits on events by name.
//! Its stderr is kept (the last lines, for error messages) and, for agents, echoed to the
//! harness's stderr with the label as prefix.
//!
//! Children die with the harness: `kill_on_drop`, and `PR_SET_PDEATHSIG` (SIGKILL when the
//! namespace worker thread that forked them exits, i.e. when the lab goes away or the harness
//! is killed).

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use patchbay::Device;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::out::emit;

const STDERR_TAIL: usize = 60;

/// A child process in a lab device.
pub struct Proc {
    pub label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `program args...` in `dev`'s namespace. `echo_stderr`: copy its stderr lines to
    /// ours (prefixed with the label).
    pub fn spawn(
        dev: &Device,
        label: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        echo_stderr: bool,
    ) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = dev.spawn_command(cmd).with_context(|| {
            format!(
                "starting {label} ({}) in device {}",
                program.display(),
                dev.name()
            )
        })?;
        emit(
            "lab",
            json!({"event": "spawned", "proc": label, "device": dev.name(), "pid": child.id(),
                           "argv": std::iter::once(program.display().to_string()).chain(args.iter().cloned()).collect::<Vec<_>>()}),
        );
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let src = label.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = match serde_json::from_str::<Value>(&line) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"event": "stdout", "line": line}),
                };
                emit(&src, v.clone());
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail2 = tail.clone();
        let src = label.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo_stderr {
                    eprintln!("[{src}] {line}");
                }
                let mut t = tail2.lock().expect("stderr tail lock");
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Self {
            label: label.to_string(),
            stdin: child.stdin.take(),
            child,
            rx,
            stderr: tail,
        })
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().expect("stderr tail lock");
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits (at most `timeout`) for the next output line whose `event` is `name`, and returns
    /// it. Fails on an `error` event, on exit, or on the timeout.
    pub async fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let label = self.label.clone();
        let res = tokio::time::timeout(timeout, async {
            while let Some(v) = self.rx.recv().await {
                match v.get("event").and_then(Value::as_str) {
                    Some(e) if e == name => return Ok(v),
                    Some("error") => return Err(anyhow!("{label} reported an error: {v}")),
                    _ => {}
                }
            }
            Err(anyhow!("{label} exited before {name:?}"))
        })
        .await;
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{e:#} (exit status {status:?})\n--- {label} stderr (tail) ---\n{}",
                    self.stderr_tail()
                )
            }
            Err(_) => bail!(
                "{label}: no {name:?} event within {:.0} s\n--- {label} stderr (tail) ---\n{}",
                timeout.as_secs_f64(),
                self.stderr_tail()
            ),
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        emit("lab", json!({"event": "killed", "proc": self.label}));
    }

    /// Writes one command line to the process's stdin.
    pub async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin closed", self.label))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the process to exit (at most `timeout`; then kills it).
    pub async fn exit(mut self, timeout: Duration) -> Result<ExitStatus> {
        drop(self.stdin.take());
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => Ok(s?),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not exit within {:.0} s; killed",
                    self.label,
                    timeout.as_secs_f64()
                )
            }
        }
    }

    /// Tells the agent to stop (`stop` on stdin), waits for its `done` line and its exit.
    pub async fn finish(mut self, timeout: Duration) -> Result<Value> {
        self.send("stop").await?;
        let done = self.wait_event("done", timeout).await?;
        let label = self.label.clone();
        let status = self.exit(timeout).await?;
        if !status.success() {
            bail!("{label} exited with {status}");
        }
        Ok(done)
    }
}
