//! The operator's actions on a QEMU migration, through QMP: throttle the source, pause and
//! recover post-copy; what QEMU cannot do is refused with the reason.

use serde_json::json;

use super::Watcher;
use crate::contract::Action;
use crate::qemu::qmp::Qmp;
use crate::units::Rate;

impl Watcher {
    /// Carries out an operator's action through QMP, or says why QEMU cannot.
    pub fn act(&mut self, action: Action) -> Result<String, String> {
        match action {
            Action::Throttle(rate) => self.set_throttle(rate),
            Action::Link(false) => self.pause(),
            Action::Link(true) => self.recover(),
            Action::Inject(_) => {
                Err("QEMU cannot make memory missing again: QMP has no command for it".into())
            }
            Action::Push(_) => Err(
                "QEMU's background stream cannot be paused on its own: throttle it instead".into(),
            ),
            Action::Remigrate => Err(
                "a new migration of a QEMU guest is started from QEMU, not from this view".into(),
            ),
            Action::Prefetch(_) => Err("QEMU's post-copy has no prefetch setting: its \
                                        background stream restarts at each faulted page"
                .into()),
        }
    }

    fn need_source(&mut self, what: &str) -> Result<&mut Qmp, String> {
        self.src
            .as_mut()
            .ok_or_else(|| format!("{what} needs the source's QMP socket (--source-qmp)"))
    }

    fn set_throttle(&mut self, rate: Rate) -> Result<String, String> {
        let src = self.need_source("throttling QEMU")?;
        // 0 is unlimited for the post-copy limit; pre-copy's limit has no such value.
        let (postcopy, precopy) = match rate.bytes_per_sec() {
            Some(b) => (b.max(1), b.max(1)),
            None => (0, 1u64 << 40),
        };
        src.execute(
            "migrate-set-parameters",
            Some(json!({"max-postcopy-bandwidth": postcopy, "max-bandwidth": precopy})),
        )
        .map_err(|e| e.to_string())?;
        self.read_throttle();
        Ok(format!("QEMU's bandwidth limit is now {rate}"))
    }

    fn pause(&mut self) -> Result<String, String> {
        if self.state != "postcopy-active" {
            return Err(format!(
                "QEMU pauses only an active post-copy (the destination is {})",
                self.state
            ));
        }
        self.need_source("pausing QEMU")?;
        // The destination first: pausing the source first leaves the destination paused
        // already, and its own pause then fails.
        self.dst
            .execute("migrate-pause", None)
            .map_err(|e| e.to_string())?;
        if let Some(src) = self.src.as_mut()
            && let Err(e) = src.execute("migrate-pause", None)
        {
            tracing::info!(%e, "source pause (it may have paused already)");
        }
        Ok("QEMU post-copy paused: the link is down, faulting vCPUs wait".into())
    }

    fn recover(&mut self) -> Result<String, String> {
        if self.state != "postcopy-paused" {
            return Err(format!(
                "QEMU recovers only a paused post-copy (the destination is {})",
                self.state
            ));
        }
        let uri = self.recover_uri();
        self.need_source("recovering QEMU")?;
        self.dst
            .execute("migrate-recover", Some(json!({ "uri": uri })))
            .map_err(|e| e.to_string())?;
        if let Some(src) = self.src.as_mut() {
            src.execute("migrate", Some(json!({ "uri": uri, "resume": true })))
                .map_err(|e| e.to_string())?;
        }
        self.recoveries += 1;
        Ok(format!("QEMU post-copy recovering over {uri}"))
    }

    fn recover_uri(&self) -> String {
        match &self.target.recover_uri {
            Some(u) if self.recoveries == 0 => u.clone(),
            // A socket file can take a new name; a TCP address is used again.
            Some(u) if u.starts_with("unix:") => format!("{u}.{}", self.recoveries),
            Some(u) => u.clone(),
            None => format!(
                "unix:{}",
                std::env::temp_dir()
                    .join(format!(
                        "faultline-recover-{}-{}.sock",
                        std::process::id(),
                        self.recoveries
                    ))
                    .display()
            ),
        }
    }
}
