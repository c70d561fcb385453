//! Child processes that never outlive their test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A spawned program in its own process group; SIGTERM then SIGKILL to the whole group on drop.
pub(crate) struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout+stderr appended to `log_path` and stdin from /dev/null.
    pub(crate) fn spawn(
        name: &str,
        mut cmd: Command,
        log_path: &Path,
    ) -> std::io::Result<ChildGuard> {
        let log = File::options().create(true).append(true).open(log_path)?;
        let log2 = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If the test thread that spawned us dies without Drop (abort, Ctrl-C), go away too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Exit status if the process has ended (reaps it).
    pub(crate) fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (polling, without blocking the runtime) for the process to exit on its own.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process group at once (SIGKILL: no goodbye, like a crashed host) and reaps it.
    pub(crate) fn kill_hard(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        kill_group(child.id(), libc::SIGKILL);
        child.wait().ok()
    }

    /// Terminates the process group: SIGTERM, up to 3 s grace, then SIGKILL. Blocks briefly.
    pub(crate) fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            kill_group(child.id(), libc::SIGKILL); // leftovers of the group, if any
            return Some(status);
        }
        kill_group(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                kill_group(child.id(), libc::SIGKILL);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("harness: {} did not exit on SIGTERM, killing", self.name);
        kill_group(child.id(), libc::SIGKILL);
        child.wait().ok()
    }
}

fn kill_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: plain syscall; the group id is the child's pid (process_group(0)).
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints a log file with a banner; used when a test panics.
pub(crate) fn print_log(title: &str, text: &str) {
    eprintln!("===== {title} =====\n{text}\n===== end of {title} =====");
}
